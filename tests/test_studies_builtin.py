"""The built-in study recipes (issue 15): every recipe is valid for both budgets, every cell resolves
(model fits the input, options typed), the parameter counts match the reports, and the cheap ones
(synthetic edges; Fashion-MNIST recipes on MNIST-format fake files) run at ``--budget quick``."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import new_store
from cnnbench import api
from cnnbench.models.base import count_parameters
from cnnbench.study import catalog, definition

CNNBENCH = str(Path(sys.executable).with_name("cnnbench"))  # the console script of this environment
BUILTIN = [e for e in catalog.entries() if e.distribution.startswith("cnnbench")]
RECIPES = {e.name: e for e in BUILTIN if e.name != "digits-optimizers"}  # digits-optimizers: the format's example
EXPECTED = {"strided-baseline", "train-size", "l1", "stride-vs-maxpool", "depth", "fit-time", "dense-head",
            "mlp-vs-lenet", "lenet-remedies", "regularisers", "final-model", "retrieval", "conv-architecture",
            "conv-improvements", "lr-batch-grid", "optimizers", "tsne-over-training", "overfit-tiny",
            "inductive-bias-size", "edge-init", "long-training", "domain-shift", "permutation", "five-classes",
            "pooling", "deeper-wider", "optimizer-memory", "batch-memory"}


def load(name: str, budget: str):
    return definition.load(name, RECIPES[name].text, budget=budget)


def test_every_study_of_the_catalogue_has_a_recipe():
    assert set(RECIPES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("budget", ["faithful", "quick"])
def test_recipe_is_valid_and_cites_its_report(name, budget):
    study = load(name, budget)
    assert re.match(r"R[0-4]-[A-M]\b", study.description), "the description starts with the study id"
    assert "Quick" in study.description or "quick" in study.description  # says what the quick budget does
    for label in study.published:  # published figures name cells that exist in this budget
        assert label in [c.label for c in study.cells]
    for cell in study.cells:  # every cell resolves: the model takes the dataset's images (shapes are
        with torch.device("meta"):  # checked on meta tensors: resnet152's real forward passes took 84 s)
            api.resolve(cell.config)


def counts(name: str) -> dict[str, int]:
    study = load(name, "faithful")
    return {c.label: count_parameters(api.resolve(c.config).model) for c in study.cells}


def test_parameter_counts_match_the_reports():
    assert set(counts("stride-vs-maxpool").values()) == {37_146}  # R0 P: both 37,146
    assert counts("depth") == {"Strided": 37_146, "Extra-Layers": 23_314, "MP-2": 37_146, "MP-3": 82_330,
                               "MP-4": 298_650}
    assert counts("dense-head")["strided + Dense(1024)"] == 2_125_082
    assert counts("mlp-vs-lenet") == {"MLP 784-128-64-10": 109_386, "LeNet-5": 61_706}
    assert counts("lenet-remedies") == {"vanilla": 61_706, "dropout 0.5": 61_706, "batch norm": 61_990}
    assert counts("regularisers")["blocks=3 / batch norm"] == 5_852_234
    assert counts("conv-improvements") == {"baseline": 967_754, "batch norm": 969_930, "dropout": 967_754,
                                           "dense": 8_657_418}
    assert set(counts("overfit-tiny").values()) == {606, 39_793}
    assert counts("edge-init")["data_per_class=10 / edge init, frozen"] == 66
    assert counts("deeper-wider")["data_per_class=10 / DeeperCNN k 3"] == 302
    assert counts("deeper-wider")["data_per_class=10 / WiderCNN k 7"] == 2_105


def test_recipes_set_the_faithful_behaviours():
    cell = load("conv-improvements", "faithful").cell("batch norm").config
    assert cell.model.options["fc_batch_norm"] == "fc1" and cell.optim.weight_decay_on == "adam"
    assert (cell.data.aug_rotation, cell.data.aug_shear, cell.data.aug_scale) == (10.0, 10.0, 0.2)
    aug = load("regularisers", "faithful").cell("blocks=2 / augmentation").config
    assert aug.data.crop_padding == "0,2,3,4" and aug.data.test_from_train == 0.15
    shift = load("domain-shift", "faithful").cell("possible_edge_location_ratio=0.5, data_per_class=10 / CNN").config
    assert shift.data.options["shifted_eval"] == "unseen" and shift.data.options["eval_per_class"] == 50
    assert load("final-model", "faithful").cells[0].config.data.train_on == "train+val"
    tsne = load("tsne-over-training", "faithful").cells[0].config.artifacts
    assert (tsne.tsne_layer, tsne.tsne_epochs, tsne.tsne_perplexity, tsne.tsne_iterations) == ("head.5", "0,21,end", 40.0, 2500)
    assert load("retrieval", "faithful").cells[0].config.artifacts.retrieval_layer == "features.1"


def test_study_list_shows_every_recipe():
    out = subprocess.run([CNNBENCH, "study", "list"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in EXPECTED:
        assert name in out.stdout
    # grouped by source report: each recipe under the heading of the report its study id names
    heading = None
    for line in out.stdout.splitlines():
        if not line.startswith("  "):
            heading = line.split(" ", 1)[0]
            continue
        name, description = line.split()[0], line.split("seeds", 1)[1].strip()
        expected = description.split("-", 1)[0] if description[:2] in ("R0", "R1", "R2", "R3", "R4") else "other"
        assert heading == expected, (name, heading)
    assert out.stdout.index("R0 — CS7CS4") < out.stdout.index("R4 — CS182")


def run_study(name: str, tmp_path: Path, *sets: str) -> tuple[str, MlflowClient, object]:
    uri = new_store(tmp_path)
    cmd = [CNNBENCH, "study", "run", name, "--budget", "quick", "--tracking-uri", uri,
           "--storage", f"sqlite:///{tmp_path}/optuna.db", "--device", "cpu", "--workers", "2", "--format", "md"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, MlflowClient(uri), load(name, "quick")


def finished_children(client: MlflowClient, study) -> list:
    exp = client.get_experiment_by_name(study.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "cnnbench.study.cell" in r.data.tags and r.info.status == "FINISHED"]


# overfit-tiny and permutation run their whole quick budget (their direction is asserted); edge-init and
# pooling assert structure only (frozen parameters, the published column), so 10 epochs do (140 s -> ~20 s).
SHORTENED = {"edge-init": ("epochs=10",), "pooling": ("epochs=10",)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["overfit-tiny", "edge-init", "permutation", "pooling"])
def test_cheap_edges_recipe_runs_at_quick_budget(name, tmp_path):
    stdout, client, study = run_study(name, tmp_path, *SHORTENED.get(name, ()))
    children = finished_children(client, study)
    assert len(children) == len(study.cells) * len(study.seeds)
    assert {r.data.tags["cnnbench.study.cell"] for r in children} == {c.label for c in study.cells}
    for label, value in study.published.items():
        assert label in stdout and f"{value:g}"[:4] in stdout  # published figures printed beside the measured
    metric = {r.data.tags["cnnbench.study.cell"]: r.data.metrics[study.metric] for r in children}
    if name == "overfit-tiny":  # R4-A: both models fit 30 images perfectly (P: 100 %)
        assert min(metric.values()) == 1.0
    if name == "permutation":  # R4-F: on permuted pixels the CNN is worse than the MLP
        cnn = [v for k, v in metric.items() if k.endswith("/ CNN")]
        mlp = [v for k, v in metric.items() if k.endswith("/ MLP")]
        assert sum(cnn) / len(cnn) < sum(mlp) / len(mlp)
    if name == "edge-init":  # frozen convs: the child logs 12 trainable parameters
        frozen = [r for r in children if r.data.tags["cnnbench.study.cell"].endswith("edge init, frozen")]
        assert {r.data.params["trainable_param_count"] for r in frozen} == {"12"}


@pytest.fixture
def fake_fashion(tmp_path):
    from test_data_files import write_idx_set

    folder = tmp_path / "data" / "FashionMNIST" / "raw"
    write_idx_set(folder, n_train=700, n_test=100, gz=False)
    return tmp_path / "data"


@pytest.mark.slow
def test_fashion_recipe_runs_at_quick_budget_on_fake_files(fake_fashion, tmp_path):
    """The Fashion-MNIST recipes need the real IDX files; on MNIST-format fakes (random pixels) they run
    end to end (train size shrunk to the fakes' 700 images)."""
    _, client, study = run_study("lenet-remedies", tmp_path, f"data_dir={fake_fashion}", "train_size=400")
    children = finished_children(client, study)
    assert {r.data.tags["cnnbench.study.cell"] for r in children} == {"vanilla", "dropout 0.5", "batch norm"}
    epochs = {r.data.tags["cnnbench.study.cell"]: r.data.params["epochs"] for r in children}
    assert epochs == {"vanilla": "10", "dropout 0.5": "15", "batch norm": "15"}  # per-variant epochs of R1-D


CIFAR_RECIPES = [n for n in sorted(EXPECTED) if load(n, "quick").cells[0].config.data.name == "cifar10"]


def distinct_cells(study) -> list:
    """One cell per distinct model, data and artifact setup (cells that differ only in optimizer,
    learning rate, batch size or training-set size train the same code path)."""
    seen, out = set(), []
    for cell in study.cells:
        c = cell.config
        key = repr((c.model, c.artifacts, dataclasses.replace(c.data, train_size=None)))
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    from test_data_files import write_cifar

    root = tmp_path_factory.mktemp("fake-cifar")
    write_cifar(root, per_batch=200)  # the standard pickled batches: 1,000 training and 200 test images
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_RECIPES)
def test_cifar_recipe_cells_train_at_quick_budget_on_fake_files(name, fake_cifar, tmp_path):
    """Every distinct cell of each CIFAR-10 recipe at its quick budget, shrunk to 1 epoch on at most
    120 images of fake CIFAR-10 files (the real ones are in ../shared, not in CI): the model, the
    data options (carved test split, train+val, crop padding, image size) and the artifacts the recipe
    asks for (a t-SNE layer and epochs, a retrieval layer) run end to end into a real MLflow store."""
    uri = new_store(tmp_path)
    for cell in distinct_cells(load(name, "quick")):
        c = cell.config
        config = c.replace(data={"data_dir": str(fake_cifar), "train_size": min(c.data.train_size or 120, 120)},
                           run={"epochs": 1, "patience": 0, "tracking_uri": uri, "experiment": name, "quiet": True},
                           artifacts={"tsne_samples": min(c.artifacts.tsne_samples, 60)})
        result = api.train(config, api.run_callbacks(config))
        assert 0.0 <= result.metrics["test_accuracy"] <= 1.0, cell.label
        files = {f.path for f in MlflowClient(uri).list_artifacts(result.run_id, "latent")}
        if config.artifacts.tsne:  # one map per stage the run reaches (epoch 0 and the end here)
            stages = {s for s in config.artifacts.tsne_epochs.split(",") if s in ("0", "end")}
            assert {f"latent/tsne_{'begin' if s == '0' else s}.png" for s in stages} <= files, (cell.label, files)
        if config.artifacts.retrieval:
            layer = config.artifacts.retrieval_layer or "intermediate"
            assert 0.0 <= result.metrics[f"retrieval_{layer}_same_class"] <= 1.0, cell.label
        assert MlflowClient(uri).get_run(result.run_id).info.status == "FINISHED"
