"""Study files: cell labels, the layering of base / budget / --set / grid / variant, the built-in
example, and every bad input of issue 11 refused in one line with exit 2 before any run exists."""

from __future__ import annotations

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
    assert "runs: 6 cells x 2 seeds = 12; rough estimate" in out
    assert "lr=0.001 / batch norm" in out and "published 0.7845" in out and "s/run" in out
    assert "published (R2, test_accuracy): lr=0.01 / none = 0.7393" in out
