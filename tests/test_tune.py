"""``cnnbench tune``, the fast part: the search grammar, the space checks against the model, the
storage URL checks and every bad input of the issue (refused before the study or any run exists).

The studies that train (parent/child runs, pruning, resume, concurrent workers, PostgreSQL, dead
workers) are in test_tune_study.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from cnnbench.config import TrainConfig
from cnnbench.errors import ConfigError
from cnnbench.campaign import storage as storages
from cnnbench.tune.session import TuneRequest, prepare
from cnnbench.tune.space import DEFAULT_SPACE, apply, parse_expression, parse_space, restrict
from cnnbench.tune.study import split_trials

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnbench"
LENET = TrainConfig()  # lenet5 on digits (28x28)


# -- grammar -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, kind, integer, low, high, step, choices",
    [
        ("lr=loguniform(1e-5,1e-1)", "loguniform", False, 1e-5, 0.1, None, ()),
        ("momentum = uniform(0.5, 0.99)", "uniform", False, 0.5, 0.99, None, ()),
        ("batch_size=int(16,128,16)", "int", True, 16, 128, 16, ()),
        ("batch-size=loguniform(16,256)", "loguniform", True, 16, 256, None, ()),
        ("batch_size=choice(32,64)", "choice", False, None, None, None, (32, 64)),
        ("optimizer=choice(sgd,adam)", "choice", False, None, None, None, ("sgd", "adam")),
        ("model.dropout=uniform(0,0.5)", "uniform", False, 0.0, 0.5, None, ()),
        ("model.batch_norm=choice(true,false)", "choice", False, None, None, None, (True, False)),
        ("data.size=choice(28,32)", "choice", False, None, None, None, (28, 32)),
    ],
)
def test_expressions_parse_to_typed_params(text, kind, integer, low, high, step, choices):
    p = parse_expression(text, LENET)
    assert (p.kind, p.integer, p.low, p.high, p.step, p.choices) == (kind, integer, low, high, step, choices)
    assert all(type(a) is type(b) for a, b in zip(p.choices, choices))
    # the canonical text (stored with the study) parses back to the same parameter
    assert parse_expression(p.text(), LENET) == p


def test_quoted_choice_values_keep_their_commas():
    mlp = TrainConfig().replace(model={"name": "mlp"})
    p = parse_expression('model.hidden=choice("128,64","256")', mlp)
    assert p.choices == ("128,64", "256")
    assert parse_expression(p.text(), mlp) == p
    assert apply(mlp, {"model.hidden": "128,64"}).model.options["hidden"] == "128,64"


def test_apply_sets_train_and_plugin_options():
    cfg = apply(LENET, {"lr": 0.01, "batch_size": 32, "model.kernel_size": 3, "model.dropout": 0.2, "optimizer": "sgd"})
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.optimizer) == (0.01, 32, "sgd")
    assert cfg.model.options == {"dropout": 0.2, "kernel_size": 3}


def test_default_space_drops_the_refused_kernel_size_and_says_why():
    space = restrict(parse_space((), LENET), LENET)
    assert space.texts() == {
        "lr": "lr=loguniform(1e-05,0.1)",
        "batch_size": "batch_size=choice(32,64,128,256)",
        "model.kernel_size": "model.kernel_size=choice(3,5)",  # lenet5 needs 40x40 inputs for 7x7 kernels
    }
    assert any("model.kernel_size: refused 7" in n and "40x40" in n for n in space.notes)
    assert len(DEFAULT_SPACE) == 3


def test_kernel_size_is_not_searched_for_models_without_one_nor_when_fixed():
    mlp = TrainConfig().replace(model={"name": "mlp"})
    space = parse_space((), mlp)
    assert space.names == ["lr", "batch_size"]
    assert any("takes no kernel size" in n for n in space.notes)
    fixed = parse_space((), LENET, fixed={"lr"})
    assert fixed.names == ["batch_size", "model.kernel_size"]
    by_option = parse_space((), LENET, fixed={"model.kernel_size"})  # --kernel-size / --model-option kernel_size=
    assert by_option.names == ["lr", "batch_size"] and "fixed by --model-option kernel_size" in by_option.notes[0]


def test_int_range_with_refused_values_becomes_the_accepted_choices():
    space = restrict(parse_space(("kernel_size=int(3,9,2)",), LENET), LENET)
    assert space.params[0].choices == (3, 5)
    assert "refused 7, 9" in space.notes[0]


def test_split_trials_is_exact():
    assert split_trials(7, 2) == [4, 3]
    assert split_trials(1, 3) == [1]
    assert sum(split_trials(30, 4)) == 30


# -- storage -----------------------------------------------------------------------------------
def test_default_storage_lies_beside_the_local_mlflow_store(tmp_path):
    assert storages.default_storage(f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert storages.default_storage(f"file://{tmp_path}/mlruns") == f"sqlite:///{tmp_path}/optuna.db"
    assert storages.default_storage(str(tmp_path / "mlruns")) == f"sqlite:///{tmp_path}/optuna.db"
    assert storages.default_storage("http://127.0.0.1:5000") == f"sqlite:///{Path.cwd()}/optuna.db"


def test_bare_server_schemes_get_the_installed_driver():
    url = storages.with_driver("postgresql://me@db/optuna")
    assert url.startswith("postgresql") and url.endswith("://me@db/optuna")
    assert storages.with_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert storages.with_driver("postgresql+psycopg2://me@db/o") == "postgresql+psycopg2://me@db/o"


def test_redact_hides_the_password():
    assert "secret" not in storages.redact("postgresql://me:secret@db:5432/optuna")


# -- bad input, through the CLI: exit 2, a message saying what is accepted, nothing created -------
BAD_INPUTS = [
    (["--search", "lr"], "is not a search expression; accepted: NAME=loguniform(LOW,HIGH)"),
    (["--search", "lr=normal(0,1)"], "unknown distribution 'normal'"),
    (["--search", "nonsense=choice(1,2)"], "unknown or unsearchable parameter 'nonsense'; searchable:"),
    (["--search", "experiment=choice(a,b)"], "unknown or unsearchable parameter 'experiment'"),
    (["--search", "tsne=choice(true,false)"], "unknown or unsearchable parameter 'tsne'"),
    (["--search", "confusion=choice(true,false)"], "unknown or unsearchable parameter 'confusion'"),
    (["--search", "model.nope=uniform(0,1)"], "model 'lenet5' has no option 'nope'; its options: model.kernel_size"),
    (["--search", "batch_size=choice()"], "choice() lists no values"),
    (["--search", "batch_size=choice(32,32)"], "choice lists 32 more than once"),
    (["--search", "lr=uniform(0.1,0.01)"], "the low end (0.1) must be below the high end (0.01)"),
    (["--search", "lr=loguniform(0,0.1)"], "a log range must lie above 0"),
    (["--search", "lr=int(1,5)"], "lr is a real number; use lr=uniform(a,b) or loguniform(a,b)"),
    (["--search", "batch_size=uniform(16,64)"], "batch_size takes integers"),
    (["--search", "batch_size=choice(32,abc)"], "'abc' is not an integer"),
    (["--search", "optimizer=choice(sgd,fancy)"], "'fancy' is not a valid optimizer; accepted: sgd"),
    (["--search", "optimizer=uniform(0,1)"], "optimizer takes str values (sgd, momentum"),
    (["--search", "model.dropout=uniform(0,1.5)"], "the value 1.5 is not accepted"),
    (["--search", "kernel_size=choice(7,9)"], "no value can be used with this model and input"),
    (["--model", "mlp", "--search", "kernel_size=choice(3,5)"], "model 'mlp' takes no kernel size"),
    (["--lr", "0.01", "--search", "lr=loguniform(1e-4,1e-2)"], "lr is both fixed (--lr) and searched"),
    (["--sampler", "grid", "--search", "lr=loguniform(1e-4,1e-2)"], "--sampler grid needs a finite space"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--n-jobs", "0"], "--n-jobs must be at least 1"),
    (["--model", "nosuchmodel"], "unknown model 'nosuchmodel'; available models:"),
    (["--storage", "postgres://me@localhost/optuna"], "spelled postgresql://, not postgres://"),
    (["--storage", "not a url"], "is not a database URL; accepted: sqlite:///PATH, postgresql://"),
    (["--storage", "oracleish://me@host/db"], "unsupported database 'oracleish'"),
    (["--storage", "redis://localhost:6379/0"], "unsupported database 'redis'"),
    (["--storage", "sqlite://"], "an in-memory SQLite study cannot be shared or resumed"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_runs(cli, tracking_uri, experiment, runs_in, tmp_path, args, message):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    base = ["tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--trials", "1", "--epochs", "1"]
    if "--storage" not in args:
        base += ["--storage", storage]
    result = cli(*base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert runs_in(experiment) == []
    if "--storage" not in args and (tmp_path / "optuna.db").exists():
        assert optuna.get_all_study_summaries(storage) == []


def test_unreachable_storage_fails_in_seconds_naming_it(cli, tracking_uri, experiment, runs_in):
    started = time.perf_counter()
    result = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment,
                 "--storage", "postgresql://me:secret@127.0.0.1:1/optuna")
    assert result.exit_code == 1  # StorageUnreachable: the input may be right, the server is not there
    assert "cannot open the study storage postgresql+psycopg2://me:***@127.0.0.1:1/optuna" in result.output  # canonical, masked
    assert "secret" not in result.output
    assert time.perf_counter() - started < 15
    assert runs_in(experiment) == []


def _request(tmp_path, tracking_uri, **changes) -> TuneRequest:
    config = TrainConfig().replace(run={"tracking_uri": tracking_uri, "epochs": 1})
    defaults = dict(config=config, storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", trials=1)
    return TuneRequest(**{**defaults, **changes})


def test_resuming_with_another_space_names_the_differences(cli, tmp_path, tracking_uri, experiment, runs_in):
    plan = prepare(_request(tmp_path, tracking_uri))  # creates study 's' with the default space
    assert not plan.resumed and plan.study.user_attrs["cnnbench.search_space"]["model.kernel_size"] == "model.kernel_size=choice(3,5)"
    result = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", f"sqlite:///{tmp_path}/optuna.db",
                 "--study-name", "s", "--search", "lr=loguniform(1e-4,1e-2)", "--search", "batch_size=choice(32,64,128,256)",
                 "--search", "optimizer=choice(sgd,adam)")
    assert result.exit_code == 2, result.output
    for expected in ("different search space", "model.kernel_size is no longer searched (was model.kernel_size=choice(3,5))",
                     "lr changed: lr=loguniform(1e-05,0.1) -> lr=loguniform(0.0001,0.01)", "optimizer is new"):
        assert expected in result.output
    assert "batch_size" not in result.output.split("space, so")[1].split("Resume")[0]  # unchanged: not named
    assert runs_in(experiment) == []
    again = prepare(_request(tmp_path, tracking_uri))
    assert again.resumed


def test_resuming_with_another_direction_is_refused(tmp_path, tracking_uri):
    prepare(_request(tmp_path, tracking_uri))
    with pytest.raises(ConfigError, match="maximizes val_accuracy; this command asks to minimize val_accuracy"):
        prepare(_request(tmp_path, tracking_uri, direction="minimize"))


def test_resuming_another_model_is_refused_and_other_fixed_changes_are_noted(tmp_path, tracking_uri):
    prepare(_request(tmp_path, tracking_uri))
    changed = TrainConfig().replace(run={"tracking_uri": tracking_uri, "epochs": 2})
    plan = prepare(_request(tmp_path, tracking_uri, config=changed))
    assert any("different fixed settings (epochs 1 -> 2" in w for w in plan.warnings)
    other = changed.replace(model={"name": "three_conv"})
    with pytest.raises(ConfigError, match="tunes --model lenet5, not three_conv"):
        prepare(_request(tmp_path, tracking_uri, config=other))


def test_grid_space_enumerates_choices_and_int_ranges():
    space = parse_space(("batch_size=int(16,64,16)", "optimizer=choice(sgd,adam)"), LENET)
    assert space.grid() == {"batch_size": [16, 32, 48, 64], "optimizer": ["sgd", "adam"]}


def test_objective_reloads_data_only_when_a_searched_value_changes_it(monkeypatch):
    from cnnbench import api
    from cnnbench.tune.objective import Objective, StudyContext

    loads = []
    monkeypatch.setattr(api, "load_data", lambda config: loads.append(config.data) or object())
    space = parse_space(("lr=loguniform(1e-4,1e-2)",), LENET)
    objective = Objective(LENET, space, StudyContext("s", "p", "e", "uri", "0"))
    first = objective.data_for(apply(LENET, {"lr": 0.01}))
    assert objective.data_for(apply(LENET, {"lr": 0.001, "batch_size": 32})) is first
    objective.data_for(apply(LENET, {"data.size": 32}))
    objective.data_for(apply(LENET, {"val_split": 0.2}))
    assert len(loads) == 3


def test_sqlite_with_several_processes_is_allowed_with_a_note(tmp_path, tracking_uri):
    plan = prepare(_request(tmp_path, tracking_uri, n_jobs=2))
    assert any("--workers 2 on SQLite" in w and "PostgreSQL or MySQL" in w for w in plan.warnings)
    con = __import__("sqlite3").connect(tmp_path / "optuna.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_tune_help_lists_its_options_and_every_train_option(cli):
    result = cli("tune", "--help")
    assert result.exit_code == 0
    for flag in ("--trials", "--timeout", "--search", "--sampler", "--pruner", "--storage", "--study-name",
                 "--workers", "--direction", "--retrain-best", "--model", "--dataset", "--lr", "--batch-size",
                 "--kernel-size", "--optimizer", "--model-option", "--train-size", "--tracking-uri"):
        assert flag in result.output
    assert "epochs per trial" in result.output
