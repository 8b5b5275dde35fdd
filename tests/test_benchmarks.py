"""Every script under benchmarks/ runs end to end here at a smoke size (so none can rot): they report
figures and these tests check the report's shape and values, never a timing threshold. Figures are
recomputed from the unrounded numbers a script writes (its JSON), never from its rounded table.
``bench_run_overhead.py`` is covered in test_run_overhead.py; test_every_benchmark_script_has_a_smoke_test
fails when a new script has none."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from test_data_files import write_cifar

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TESTS = Path(__file__).resolve().parent


def bench(script: str, *args, timeout: int = 600, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode in ok, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_every_benchmark_script_has_a_smoke_test():
    covered = set(re.findall(r"(bench_\w+)\.py", (TESTS / "test_benchmarks.py").read_text()
                              + (TESTS / "test_run_overhead.py").read_text()))
    assert {p.stem for p in BENCH.glob("bench_*.py")} <= covered


@pytest.mark.slow
def test_fast_cifar10_benchmark_reports_a_curve_and_the_final_accuracy(tmp_path):
    write_cifar(tmp_path, per_batch=450)  # 2,250 random-pixel training images in the real file format
    out = subprocess.run([sys.executable, str(BENCH / "bench_fast_cifar10.py"), "--cifar-dir", str(tmp_path),
                          "--quick", "--json"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    (run,) = report["runs"]
    assert run["epochs"] == 2 and len(run["curve"]) == 2
    times = [t for t, _ in run["curve"]]
    assert 0 < times[0] < times[1] <= run["wall_s"] + 1  # run_time_s counts from process start
    assert run["curve"][-1][1] == pytest.approx(run["test_accuracy"])  # the last point is the final test
    assert 0 <= run["test_accuracy"] <= 1 and run["fit_time_s"] > 0
    assert run["time_to_85"] is None  # random pixels: the target is not reached, and it says so


@pytest.mark.slow
def test_channels_last_benchmark_reports_each_model_and_the_thread_table(tmp_path):
    out = bench("bench_channels_last.py", "--quick", "--models", "lenet5,fast_cnn", "--batch", "16",
                "--json", tmp_path / "cl.json")
    report = json.loads((tmp_path / "cl.json").read_text())
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)$", out.stdout, re.M)}
    assert set(rows) == set(report["models"]) == {"lenet5", "fast_cnn"}
    for name, got in report["models"].items():
        # the ratio from the unrounded rates (the JSON); the table is those numbers rounded
        assert got["nchw_images_s"] > 0 and got["nhwc_images_s"] > 0
        assert got["ratio"] == pytest.approx(got["nhwc_images_s"] / got["nchw_images_s"], rel=1e-12)
        assert rows[name] == (round(got["nchw_images_s"]), round(got["nhwc_images_s"]), round(got["ratio"], 2))
    threads = re.findall(r"^\s+(\d+)\s+([01])\s+(\d+)\s+([\d.]+)$", out.stdout, re.M)
    assert {(n, load) for n, load, _, _ in threads} >= {("1", "0"), ("1", "1")}
    assert {(t["threads"], t["competing"]) for t in report["threads"]} == {(int(n), int(load)) for n, load, _, _ in threads}
    quiet = max(t["threads"] for t in report["threads"])
    (base,) = [t for t in report["threads"] if t["threads"] == quiet and t["competing"] == 0]
    for t in report["threads"]:
        assert t["ratio"] == pytest.approx(t["images_s"] / base["images_s"], rel=1e-12)


def fake_cifar(root: Path, per_batch: int) -> Path:
    write_cifar(root, per_batch=per_batch)  # random pixels in the real file format: 5 x per_batch training images
    return root


@pytest.mark.slow
def test_engine_overhead_benchmark_interleaves_both_loops_and_times_the_artifacts(tmp_path):
    """The tracked-epoch vs hand-written-loop ratio the README quotes: 3 timed epochs per side, on 300
    digits images and on a fake CIFAR-10 folder (60 test images)."""
    cifar = fake_cifar(tmp_path / "cifar", per_batch=60)
    bench("bench_engine_overhead.py", "--epochs", 3, "--train-size", 300, "--cifar-dir", cifar,
          "--cifar-train", 200, "--threads", 1, "--json", tmp_path / "out.json")
    report = json.loads((tmp_path / "out.json").read_text())
    assert set(report) == {"default_run", "cifar10"}
    for key, dataset, train, test in (("default_run", "digits", 300, 360), ("cifar10", "cifar10", 200, 60)):
        r = report[key]
        assert (r["dataset"], r["model"], r["train_images"], r["test_images"]) == (dataset, "lenet5", train, test)
        assert r["torch_threads"] == 1 and r["device"] == "cpu"
        for clock in ("wall", "cpu"):
            hand, ours = r[f"hand_epoch_{clock}_s"], r[f"cnnbench_epoch_{clock}_s"]
            assert len(hand) == len(ours) == 3 and min(hand) > 0 and min(ours) > 0
            # the lists are rounded to 1 ms and the ratios to 1e-4: recomputed within those roundings' exact bounds
            for name, pick in (("median", statistics.median), ("mean", statistics.mean)):
                num, den = pick(ours), pick(hand)
                lo, hi = (num - 5e-4) / (den + 5e-4), (num + 5e-4) / (den - 5e-4)
                assert lo - 5e-5 <= r[f"ratio_{clock}_{name}"] <= hi + 5e-5, (key, clock, name)
        assert 0 <= r["test_accuracy"] <= 1
        assert {"evaluation", "curves"} <= set(r["artifact_seconds"]) and min(r["artifact_seconds"].values()) >= 0
        end_of_run = sum(v for k, v in r["artifact_seconds"].items() if not k.startswith("tsne_") or k == "tsne_end")
        assert 0 < r["artifacts_time_s"] <= r["end_of_run_total_s"] + 0.001
        assert r["artifacts_time_s"] == pytest.approx(end_of_run, abs=0.006)  # the builders' end-of-run seconds (rounded to 1 ms)


@pytest.mark.slow
def test_data_pipeline_benchmark_reports_every_loader_and_the_ratios(tmp_path):
    cifar = fake_cifar(tmp_path / "cifar", per_batch=300)
    bench("bench_data_pipeline.py", "--cifar-dir", cifar, "--batches", 2, "--repeats", 1, "--threads", 1,
          "--json", tmp_path / "out.json")
    r = json.loads((tmp_path / "out.json").read_text())
    loaders = {"tutorial_w0", "tutorial_w2", "cnnbench", "cnnbench_cl", "bare_loop_cl"}
    assert set(r["train_images_per_s"]) == set(r["train_images_per_cpu_s"]) == set(r["all_runs_images_per_s"]) == loaders
    assert (r["timed_steps"], r["repeats"], r["batch_size"], r["torch_threads"]) == (2, 1, 128, 1)
    assert all(v > 0 for v in r["train_images_per_s"].values()) and all(v > 0 for v in r["data_only_images_per_s"].values())
    rate = r["train_images_per_s"]
    best = max(rate["tutorial_w0"], rate["tutorial_w2"])
    # rates are rounded to whole images/s and ratios to 0.01: each ratio within those roundings' exact bounds
    for key, num, den in (("ratio_cnnbench_vs_best_tutorial", rate["cnnbench"], best),
                          ("ratio_cnnbench_channels_last_vs_best_tutorial", rate["cnnbench_cl"], best),
                          ("ratio_bare_loop_channels_last_vs_best_tutorial", rate["bare_loop_cl"], best),
                          ("cnnbench_channels_last_share_of_bare_loop", rate["cnnbench_cl"], rate["bare_loop_cl"])):
        assert (num - 0.5) / (den + 0.5) - 0.005 <= r[key] <= (num + 0.5) / (den - 0.5) + 0.005, key
    assert r["peak_rss_mb"] > 0 and r["cifar10_load_s"] >= 0


def test_estimate_benchmark_compares_one_recipe_with_its_measured_wall(tmp_path):
    """``study show``'s estimate against the wall of one recipe page (digits-optimizers, the cheapest)."""
    out = bench("bench_estimate.py", "--only", "digits-optimizers", "--repeats", 1, "--out", tmp_path / "rows.json", ok=(0, 1))
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["study"] == "digits-optimizers" and row["workers"] >= 1 and row["measured_s"] > 0
    assert len(row["estimates_s"]) == 1 and row["estimate_s"] == row["estimates_s"][0] > 0
    assert row["ratio"] == row["estimate_s"] / row["measured_s"]
    within = 0.5 <= row["ratio"] <= 2
    assert out.returncode == (0 if within else 1)  # the exit status says whether every estimate is within 2x
    assert f"{int(within)} of 1 within 2x" in out.stdout


@pytest.mark.slow
def test_launchers_benchmark_local_mode_reports_wall_first_start_and_cell(tmp_path):
    """The local-only mode (SQLite queue and store; no PostgreSQL, mlflow server, Slurm or Ray), 2 cells.
    The servers' mode needs them (tests/servers.py) and is what the README's figures come from."""
    out = bench("bench_launchers.py", "--quick", "--launchers", "local", "--stores", "sqlite", "--repeats", 1,
                "--out", tmp_path / "out.json")
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["cells"] == 2 and [run["launcher"] for run in r["runs"]] == ["local"]
    (run,) = r["runs"]
    assert 0 < run["first_start_s"] < run["wall_s"] and 0 < run["cell_s"] < run["wall_s"]
    local = r["summary"]["local"]
    assert local["wall_s"] == run["wall_s"] and local["overhead_per_cell_s"] == 0
    assert re.search(r"^local\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+1\.00\s+0\.00$", out.stdout, re.MULTILINE), out.stdout


def test_launchers_benchmark_refuses_sqlite_stores_for_remote_launchers():
    out = bench("bench_launchers.py", "--stores", "sqlite", "--launchers", "local,slurm", ok=(2,))
    assert "--stores sqlite runs --launchers local only" in out.stderr


def test_memory_benchmark_predicts_and_measures_the_chosen_models(tmp_path):
    out = bench("bench_memory.py", "--quick", "--models", "lenet5,mlp", "--json", tmp_path / "rows.json")
    r = json.loads((tmp_path / "rows.json").read_text())
    cells = {(row["model"], row["optimizer"], row["batch"]) for row in r["cpu"]}
    assert cells == {(m, o, b) for m in ("lenet5", "mlp") for o in ("sgd", "momentum", "adam") for b in (8, 64)}
    for row in r["cpu"]:
        assert row["predicted"] > 0 and row["measured"] > 0 and row["tracked"] > 0
        assert row["error_pct"] == pytest.approx(100 * (row["predicted"] - row["measured"]) / row["measured"])
    assert f"CPU: {len(cells)} cells" in out.stdout
    assert bench("bench_memory.py", "--models", "no_such_model", ok=(2,)).stderr.count("unknown model(s) no_such_model")


@pytest.mark.slow
def test_queue_benchmark_drains_exactly_once_and_reports_the_target(tmp_path):
    """SQLite (and PostgreSQL where its binaries are here), the new queue and the old one, small sizes."""
    postgres = bool(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")))
    backends = ["sqlite", "postgresql"] if postgres else ["sqlite"]
    bench("bench_queue.py", "--backends", ",".join(backends), "--jobs", 120, "--workers", "1,2", "--repeats", 1,
          "--baseline", "--baseline-jobs", 20, "--target-waiting", 300, "--target-running", 30, "--target-claims", 10,
          "--out", tmp_path / "q.json")
    r = json.loads((tmp_path / "q.json").read_text())
    plan = {(row["queue"], row["db"], row["jobs"], row["workers"]) for row in r["drain"]}
    assert plan == {("new", b, 120, w) for b in backends for w in (1, 2)} | {("old", b, 20, w) for b in backends for w in (1, 4)}
    for row in r["drain"]:
        assert row["claims"] == row["distinct"] == row["jobs"] and row["duplicates"] == row["missing"] == 0, row
        assert row["errors"] == [] and row["claims_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert [(t["db"], t["waiting"], t["running"]) for t in r["target"]] == [(b, 300, 30) for b in backends]
    assert all(0 < t["p50_ms"] <= t["p99_ms"] for t in r["target"])


@pytest.mark.slow
def test_study_benchmark_times_plain_runs_and_study_cells(tmp_path):
    out = bench("bench_study.py", "--seeds", 2, "--json", tmp_path / "out.json")
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["seeds"] == 2 and len(r["plain_s"]) == len(r["study_cell_s"]) == 2 and len(r["claim_finish_s"]) == 20
    assert min(r["plain_s"]) > 0 and min(r["study_cell_s"]) > 0 and r["total_s"] >= sum(r["study_cell_s"]) - 1e-6
    steady = r["study_cell_s"][1:]  # the first cell, with the worker's warm-up, is reported apart
    assert r["overhead_mean_s"] == pytest.approx(statistics.mean(steady) - statistics.mean(r["plain_s"]), abs=1e-12)
    assert r["overhead_median_s"] == pytest.approx(statistics.median(steady) - statistics.median(r["plain_s"]), abs=1e-12)
    assert f"overhead per cell: mean {r['overhead_mean_s']:+.3f} s" in out.stdout
    # beyond fit: each steady cell's wall minus its own run's time_fit_s, read back from the store
    assert len(r["cell_fit_s"]) == 2 and 0 < min(r["cell_fit_s"]) and r["beyond_fit_s"] == [
        wall - fit for wall, fit in zip(r["study_cell_s"][1:], r["cell_fit_s"][1:])]
    assert r["beyond_fit_mean_s"] == pytest.approx(statistics.mean(r["beyond_fit_s"]), abs=1e-12)
    assert f"per-cell overhead beyond fit (cell wall - its run's time_fit_s): mean {r['beyond_fit_mean_s']:.3f} s" in out.stdout
    assert bench("bench_study.py", "--seeds", 1, ok=(2,)).stderr.count("--seeds must be at least 2")


@pytest.mark.slow
def test_tune_benchmark_overhead_times_each_trial(tmp_path):
    out = bench("bench_tune.py", "overhead", "--trials", 2, "--json", tmp_path / "out.json")
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["trials"] == 2 and len(r["overhead_s"]) == 2 and r["overhead_s"] == sorted(r["overhead_s"])
    assert r["median_s"] == statistics.median(r["overhead_s"]) and r["max_s"] == r["overhead_s"][-1]
    assert f"median {r['median_s']:.3f} s, max {r['max_s']:.3f} s over 2 trials" in out.stdout


@pytest.mark.slow
def test_tune_benchmark_study_reads_the_parent_run_back(tmp_path):
    out = bench("bench_tune.py", "study", "--trials", 2, "--json", tmp_path / "out.json", "--", "--epochs", 1,
                "--train-size", 200)
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["command"][-4:] == ["--epochs", "1", "--train-size", "200"] and r["trials"] == 2
    m = r["metrics"]
    assert m["trials_complete"] + m["trials_pruned"] + m["trials_failed"] == 2 and m["trials_failed"] == 0
    assert 0 <= m["best_val_accuracy"] <= 1 and 0 < m["tune_wall_time_s"] < r["wall_s"]
    assert f"{m['trials_complete']:.0f} complete / {m['trials_pruned']:.0f} pruned" in out.stdout



@pytest.mark.slow
def test_peers_benchmark_runs_every_side_in_fresh_stores_and_reports_the_ratios(tmp_path):
    """cnnbench (default, artifacts off), torch + MLflow and Lightning + MLFlowLogger at a tiny size: each side
    timed once, each in its own new store (the script checks it left one FINISHED run); Lightning only where
    the ``bench`` extra is installed, else the report says it was skipped and why."""
    has_lightning = importlib.util.find_spec("lightning") is not None
    out = bench("bench_peers.py", "--repeats", 1, "--epochs", 1, "--train-size", 200, "--json", tmp_path / "p.json")
    r = json.loads((tmp_path / "p.json").read_text())
    sides = {"cnnbench", "cnnbench_no_artifacts", "torch_mlflow"} | ({"lightning"} if has_lightning else set())
    assert set(r["walls_s"]) == set(r["median_s"]) == set(r["commands"]) == sides
    assert (r["epochs"], r["train_size"], r["repeats"]) == (1, 200, 1)
    for side, walls in r["walls_s"].items():
        assert len(walls) == 1 and walls[0] > 0 and r["median_s"][side] == walls[0]
        assert r["ratio_vs_torch_mlflow"][side] == pytest.approx(walls[0] / r["walls_s"]["torch_mlflow"][0], rel=1e-12)
    assert "--no-tsne" in r["commands"]["cnnbench_no_artifacts"] and "--no-log-model" not in r["commands"]["cnnbench_no_artifacts"]
    assert r["cpu"]["capability"] and r["cpu"]["model"] and len(r["load_before"]) == len(r["load_after"]) == 3
    if has_lightning:
        assert r["lightning_skipped"] is None
        for side in sides:
            assert r["ratio_vs_lightning"][side] == pytest.approx(r["median_s"][side] / r["median_s"]["lightning"], rel=1e-12)
        assert re.search(r"^target cnnbench <= 1\.0x lightning: (met|not met)", out.stdout, re.M)
    else:
        assert r["ratio_vs_lightning"] is None and "not installed" in r["lightning_skipped"]
        assert "lightning skipped: lightning is not installed" in out.stdout
