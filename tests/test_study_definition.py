"""Study files: cell labels, the layering of base / budget / --set / grid / variant, the built-in
example, and every bad input of issue 11 refused in one line with exit 2 before any run exists."""

from __future__ import annotations

import re

import pytest

from cnnbench.errors import ConfigError
from cnnbench.study import catalog, definition

STUDY = """
name = "regs"
description = "blocks x regulariser"
seeds = 2
reference = "blocks=2 / none"

[base]
model = "block_cnn"
dataset = "digits"
epochs = 3
lr = 1e-3

[grid]
"model.blocks" = [2, 3]

[[variants]]
name = "none"
[[variants]]
name = "batch norm"
"model.batch_norm" = true
[[variants]]
name = "augmentation"
augment = "flip-crop"

[budgets.quick]
epochs = 1
train_size = 200
seeds = [0, 7]

[published]
source = "R2"
"blocks=2 / none" = 0.7393
"blocks=3 / batch norm" = 0.7845
"""


def load(text: str = STUDY, **kw) -> definition.Study:
    return definition.load("s.toml", text, **kw)


def test_labels_follow_the_issue_and_cells_layer_base_grid_variant():
    study = load()
    assert [c.label for c in study.cells] == [
        "blocks=2 / none", "blocks=2 / batch norm", "blocks=2 / augmentation",
        "blocks=3 / none", "blocks=3 / batch norm", "blocks=3 / augmentation"]
    cell = study.cell("blocks=3 / batch norm")
    assert cell.config.model.options == {"blocks": 3, "batch_norm": True}
    assert cell.config.run.epochs == 3 and cell.config.optim.lr == 1e-3 and cell.config.data.augment == "none"
    assert study.cell("blocks=2 / augmentation").config.data.augment == "flip-crop"
    assert study.seeds == (0, 1) and study.study_id == "regs"
    # study defaults: cheap artifacts only
    assert not cell.config.artifacts.tsne and not cell.config.artifacts.retrieval and not cell.config.artifacts.model
    assert cell.config.artifacts.confusion


def test_budget_and_set_override_base_but_not_the_grid():
    study = load(budget="quick", sets=["lr=0.01", "batch_size=16"])
    assert study.study_id == "regs-quick" and study.seeds == (0, 7)
    cfg = study.cell("blocks=2 / none").config
    assert (cfg.run.epochs, cfg.data.train_size, cfg.optim.lr, cfg.optim.batch_size) == (1, 200, 0.01, 16)
    assert study.digest != load().digest  # what is trained changed
    assert load().digest == load().digest


def test_two_axis_labels_and_values_spelled_as_in_toml():
    text = 'name = "g"\n[base]\ndataset = "digits"\n[grid]\nlr = [0.001, 0.1]\n"model.batch_norm" = [true, false]\n'
    assert [c.label for c in load(text).cells] == ["lr=0.001, batch_norm=true", "lr=0.001, batch_norm=false",
                                                 "lr=0.1, batch_norm=true", "lr=0.1, batch_norm=false"]


def test_model_and_dataset_can_be_axes():
    text = 'name = "m"\n[base]\ndataset = "digits"\nmodel = "lenet5"\n"model.dropout" = 0.5\n[grid]\nmodel = ["lenet5", "mlp"]\nepochs = [1, 2]\n'
    cells = load(text).cells
    assert [c.config.model.name for c in cells] == ["lenet5", "lenet5", "mlp", "mlp"]
    assert [c.config.run.epochs for c in cells] == [1, 2, 1, 2]
    assert cells[2].config.model.options == {}  # another model starts from its own defaults


def test_changed_definition_lists_the_keys_that_differ():
    old, new = load().fingerprint(), load(sets=["lr=0.01"]).fingerprint()
    diffs = definition.differences(old, new)
    assert len(diffs) == 6 and all("lr 0.001 -> 0.01" in d for d in diffs)


def test_builtin_example_is_listed_and_expands():
    names = {e.name: e for e in catalog.entries()}
    assert "digits-optimizers" in names and names["digits-optimizers"].text
    study = definition.load(*catalog.source("digits-optimizers"), budget="quick")
    assert len(study.cells) == 8 and study.reference in [c.label for c in study.cells]


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nseeds = [1, \n', "is not valid TOML: "),
    ('name = "x"\nfoo = 1\n[grid]\nlr = [0.1]\n', "unknown key(s) foo; valid keys: name, description"),
    ('name = "x"\n[grid]\nlrr = [0.1]\n', "cell 'lrr=0.1': unknown option 'lrr'; accepted: "),
    ('name = "x"\n[grid]\nlr = [0.1, -1.0]\n', "cell 'lr=-1.0' lr: --lr must be positive; got -1"),
    ('name = "x"\n[grid]\noptimizer = ["adam", "adamm"]\n', "cell 'optimizer=adamm' optimizer: unknown --optimizer value 'adamm'; accepted: sgd"),
    ('name = "x"\n[base]\nepochs = "2"\n[grid]\nlr = [0.1]\n', "[base] epochs: --epochs expects an integer"),
    ('name = "x"\n[grid]\n', "[grid] is empty"),
    ('name = "x"\n[grid]\nlr = []\n', "grid axis 'lr' must be a non-empty list"),
    ('name = "x"\n', "the study has no cells"),
    ('name = "x"\nseeds = 0\n[grid]\nlr = [0.1]\n', "seeds must be a positive count"),
    ('name = "x"\nseeds = -2\n[grid]\nlr = [0.1]\n', "seeds must be a positive count"),
    ('name = "x"\n[grid]\nlr = [0.1]\n[published]\n"lr=0.2" = 0.5\n', "published label 'lr=0.2' matches no cell; cells: lr=0.1"),
    ('name = "x"\nreference = "lr=1"\n[grid]\nlr = [0.1]\n', "reference 'lr=1' matches no cell"),
    ('name = "X y"\n[grid]\nlr = [0.1]\n', "must use only a-z, 0-9 and '-'"),
    ('name = "x"\n[grid]\ndevice = ["cpu"]\n', "an option that cannot be varied: 'device'"),
])
def test_bad_study_files_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as err:
        load(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_toml_error_names_line_and_column():
    with pytest.raises(ConfigError, match=r"line 2, column \d+"):
        load('name = "x"\nseeds = = 3\n')


def test_unknown_budget_lists_the_accepted_ones():
    with pytest.raises(ConfigError, match="unknown --budget 'slow' for study 'regs'; accepted: quick"):
        load(budget="slow")


def test_entry_point_objects_may_be_a_path_or_a_function(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "p"\n[grid]\nlr = [0.1]\n')
    assert catalog._read(path) == catalog._read(str(path)) == catalog._read(lambda: path.read_text())
    with pytest.raises(TypeError):
        catalog._read(42)


def test_unknown_study_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown study 'nope'.*known: .*digits-optimizers"):
        catalog.source("nope")


def test_study_list_shows_the_builtin_with_cells_and_seeds(cli):
    result = cli("study", "list")
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if "digits-optimizers" in x)
    assert "8 cells x 3 seeds" in line and "budgets: quick, faithful" in line


def test_study_show_lists_cells_runs_published_and_an_estimate(cli, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.replace('model = "block_cnn"', 'model = "lenet5"').replace('"model.blocks" = [2, 3]', 'lr = [0.01, 0.001]')
                    .replace('"model.batch_norm" = true', '"model.dropout" = 0.5').replace("blocks=2 / none", "lr=0.01 / none")
                    .replace("blocks=3 / batch norm", "lr=0.001 / batch norm"))
    result = cli("study", "show", path, "--budget", "quick")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"runs: 6 cells x 2 seeds = 12; estimate [\d.]+ (s|min) with --workers 2 on this machine "
                     r"\([\d.]+ (s|min) of runs; timed steps per model/input\)", out), out
    assert "lr=0.001 / batch norm" in out and "published 0.7845" in out and "s/run" in out
    assert "published (R2, test_accuracy): lr=0.01 / none = 0.7393" in out
    per_run = [float(m) for m in re.findall(r"~(\d+) s/run", out)]
    assert len(per_run) == 6 and all(v >= 2.5 for v in per_run)  # at least the per-cell overhead


def test_the_wall_estimate_divides_the_runs_among_the_workers_the_cores_allow():
    from types import SimpleNamespace

    from cnnbench.study.estimate import STUDY_START_S, wall_seconds

    study = SimpleNamespace(cells=[0] * 3, seeds=(0, 1))
    per_run = {"a": 10.0, "b": 20.0, "c": 30.0}  # 60 s a seed, 120 s of runs
    assert wall_seconds(study, per_run, 1, cores=2) == pytest.approx(120 + STUDY_START_S)
    assert wall_seconds(study, per_run, 2, cores=2) == pytest.approx(60 + STUDY_START_S)
    assert wall_seconds(study, per_run, 8, cores=2) == pytest.approx(60 + STUDY_START_S)  # the cores bound it
    assert wall_seconds(study, per_run, 8, cores=16) == pytest.approx(20 + STUDY_START_S)  # 6 jobs: 6 at once


# -- limits and names checked before anything is created (FAULTS ST7h, ST8a/b, ST9c, ST14, ST19) --
def _axis(values) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


HUGE = ('name = "huge"\nseeds = 3\n[base]\nmodel = "lenet5"\ndataset = "digits"\n[grid]\n'
        f"epochs = {_axis(range(1, 101))}\ntrain_size = {_axis(range(100, 200))}\n"
        f'"model.dropout" = {_axis(i / 1000 for i in range(100))}\n')
SMALL = 'name = "small"\nseeds = {seeds}\n[base]\nmodel = "lenet5"\ndataset = "digits"\n[grid]\nlr = [0.1, 0.01]\n'
TWO_SPELLINGS = ('name = "k"\n[base]\nmodel = "lenet5"\ndataset = "digits"\n[grid]\n'
                 'kernel_size = [3, 5]\n"model.kernel_size" = [3, 5]\n')


def one_error_line(result) -> str:
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_ST8a_study_show_of_a_100x100x100_grid_is_refused_with_the_computed_count(cli, tmp_path):
    path = tmp_path / "huge.toml"
    path.write_text(HUGE)
    result = cli("study", "show", path, "--no-estimate")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "100 x 100 x 100 grid points x 1 variant x 3 seeds = 3,000,000 runs" in line
    assert "limit of 10,000" in line and "--max-jobs N" in line


def test_the_job_count_multiplies_variants_and_seeds_and_max_jobs_moves_the_limit(cli, tmp_path):
    text = SMALL.format(seeds=3) + '[[variants]]\nname = "a"\n[[variants]]\nname = "b"\n"model.dropout" = 0.5\n'
    with pytest.raises(ConfigError, match=r"2 grid points x 2 variants x 3 seeds = 12 runs, above the limit of 11;"):
        load(text, max_jobs=11)
    assert len(load(text, max_jobs=12).cells) == 4
    path = tmp_path / "s.toml"
    path.write_text(text)
    result = cli("study", "show", path, "--no-estimate", "--max-jobs", "11")
    assert result.exit_code == 2 and "= 12 runs, above the limit of 11" in one_error_line(result)
    assert cli("study", "show", path, "--no-estimate", "--max-jobs", "0").exit_code == 2  # usage error
    only_variants = 'name = "v"\nseeds = [0, 1]\n[[variants]]\nname = "a"\n[[variants]]\nname = "b"\nlr = 0.5\n'
    with pytest.raises(ConfigError, match="no grid x 2 variants x 2 seeds = 4 runs, above the limit of 3"):
        load(only_variants, max_jobs=3)


def test_the_budget_replaced_axis_is_what_is_counted():
    text = SMALL.format(seeds=1) + "[budgets.wide]\nlr = [0.1, 0.2, 0.3, 0.4]\n"
    assert len(load(text, max_jobs=2).cells) == 2
    with pytest.raises(ConfigError, match="4 grid points x 1 variant x 1 seed = 4 runs"):
        load(text, budget="wide", max_jobs=2)


@pytest.mark.parametrize("seeds, message", [
    ("1000000", "seeds = 1000000 is above the limit of 10,000 runs; give a count from 1 to 10,000"),
    ("9" * 90, "seeds = a number of 90 digits is above the limit of 10,000 runs"),
    (_axis(range(10_001)), "seeds lists 10,001 seeds, above the limit of 10,000 runs"),
    ("[0, 4294967296]", "seed 4294967296 is out of range; give a count from 1 to 10,000 (repeats per cell; --max-jobs N "
                        "raises the limit) or a list of at most 10,000 distinct seeds from 0 to 4294967295"),
    ("[" + "9" * 5000 + "]", "holds an integer of thousands of digits; no option or count accepts a number that large"),
])
def test_ST19_absurd_seeds_are_refused_as_numbers(seeds, message):
    with pytest.raises(ConfigError) as err:
        load(SMALL.format(seeds=seeds))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_largest_seed_and_a_count_at_the_limit_are_accepted():
    assert load(SMALL.format(seeds="[0, 4294967295]")).seeds == (0, 4294967295)
    assert len(load(SMALL.format(seeds=5000)).seeds) == 5000  # 2 cells x 5000 = the limit


@pytest.mark.parametrize("text, message", [
    (TWO_SPELLINGS, "[grid]: 'kernel_size' and 'model.kernel_size' are two spellings of the option 'model.kernel_size'"),
    ('name = "k"\n[base]\nmodel = "lenet5"\ndataset = "digits"\nkernel_size = 3\n"model.kernel_size" = 5\n[grid]\nlr = [0.1]\n',
     "[base]: 'kernel_size' and 'model.kernel_size' are two spellings of the option 'model.kernel_size'"),
    ('name = "k"\n[base]\nmodel = "lenet5"\ndataset = "digits"\n[grid]\nkernel_size = [3, 5]\n'
     '[[variants]]\nname = "seven"\n"model.kernel_size" = 7\n',
     "variant 'seven' sets 'model.kernel_size', which grid axis 'kernel_size' varies"),
    ('name = "k"\n[grid]\nlr = [0.1, 0.01]\n[[variants]]\nname = "fast"\nlr = 0.5\n',
     "variant 'fast' sets 'lr', which grid axis 'lr' varies"),
    ('name = "k"\n[grid]\nlr = [0.1, 0.01]\n[[variants]]\nname = "a"\nkernel_size = 3\n"model.kernel_size" = 5\n',
     "variant 'a': 'kernel_size' and 'model.kernel_size' are two spellings"),
])
def test_one_option_under_two_spellings_or_in_grid_and_variant_is_refused(text, message):
    with pytest.raises(ConfigError) as err:
        load(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_two_spellings_on_the_command_line_are_refused_and_a_budget_may_use_the_alias():
    with pytest.raises(ConfigError, match="--set: 'kernel_size' and 'model.kernel_size' are two spellings"):
        load(SMALL.format(seeds=1), sets=["kernel_size=3", "model.kernel_size=5"])
    text = ('name = "k"\n[base]\nmodel = "lenet5"\ndataset = "digits"\n[grid]\nkernel_size = [3, 5]\n'
            '[budgets.one]\n"model.kernel_size" = [3]\n')
    study = load(text, budget="one")  # the budget replaces the axis it names under its other spelling
    assert [c.label for c in study.cells] == ["kernel_size=3"]


def test_ST7h_study_show_refuses_two_spellings_of_one_axis(cli, tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(TWO_SPELLINGS)
    result = cli("study", "show", path, "--no-estimate")
    assert result.exit_code == 2
    assert "'kernel_size' and 'model.kernel_size' are two spellings" in one_error_line(result)


@pytest.mark.parametrize("name", ["regs", "regs-quick", "My_Study.v2", "a" * 200])
def test_check_study_name_accepts_letters_digits_dash_underscore_dot(name):
    assert definition.check_study_name(name) == name


@pytest.mark.parametrize("name", ["", "bob's study", "../../etc/bob", "x' or tags.a != '", 'a"b', "a" * 201, "tab\there"])
def test_check_study_name_refuses_anything_else_in_one_line(name):
    with pytest.raises(ConfigError) as err:
        definition.check_study_name(name)
    assert "use only letters, digits, '-', '_' and '.' (1 to 200 characters)" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_budget_name_that_would_break_the_study_id_is_refused():
    with pytest.raises(ConfigError, match="budget name \"bob's\" is not accepted"):
        load(SMALL.format(seeds=1) + "[budgets.\"bob's\"]\nepochs = 1\n")


@pytest.mark.parametrize("name", ["../../etc/bob's study", "x' or tags.a != '"])
def test_ST9c_ST14_study_report_refuses_a_bad_study_name_with_exit_2(cli, tracking_uri, tmp_path, name):
    path = tmp_path / "s.toml"
    path.write_text(SMALL.format(seeds=1))
    result = cli("study", "report", path, "--study-name", name, "--tracking-uri", tracking_uri)
    assert result.exit_code == 2
    assert f"--study-name {name!r} is not accepted" in one_error_line(result)


@pytest.mark.parametrize("text, flags, message", [
    (HUGE, [], "100 x 100 x 100 grid points x 1 variant x 3 seeds = 3,000,000 runs"),
    (SMALL.format(seeds=1000000), [], "seeds = 1000000 is above the limit of 10,000 runs"),
    (SMALL.format(seeds="[7, 4294967296]"), [], "seed 4294967296 is out of range"),
    (SMALL.format(seeds=3), ["--max-jobs", "5"], "2 grid points x 1 variant x 3 seeds = 6 runs, above the limit of 5"),
    (TWO_SPELLINGS, [], "'kernel_size' and 'model.kernel_size' are two spellings"),
    (SMALL.format(seeds=1), ["--study-name", "bob's study"], "--study-name \"bob's study\" is not accepted"),
])
def test_ST8b_study_run_refuses_before_any_run_or_storage_exists(cli, tracking_uri, experiment, runs_in, tmp_path,
                                                             text, flags, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    storage = tmp_path / "optuna.db"
    result = cli("study", "run", path, "--tracking-uri", tracking_uri, "--experiment", experiment,
                 "--storage", f"sqlite:///{storage}", *flags)
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert runs_in(experiment) == [] and not storage.exists()


def test_find_parent_quotes_the_name_it_looks_up(tracking_uri, experiment):
    """A name holding a quote (from a store written by an older cnnbench) is found, not a filter error."""
    from mlflow.tracking import MlflowClient

    from cnnbench.study import report as reports

    client = MlflowClient(tracking_uri)
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id, tags={"cnnbench.study.id": "bob's study", "cnnbench.role": "study"}).info.run_id
    assert reports.find_parent(client, "bob's study", experiment=experiment) == run_id
    with pytest.raises(ConfigError, match="no study run \"x' or tags.a != '\""):
        reports.find_parent(client, "x' or tags.a != '", experiment=experiment)
