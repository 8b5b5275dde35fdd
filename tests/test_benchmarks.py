"""The speed benchmarks run end to end at their reduced size (CI's slow set): they report figures and
these tests check the report's shape and values, never a timing threshold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_data_files import write_cifar

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


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
def test_channels_last_benchmark_reports_each_model_and_the_thread_table():
    out = subprocess.run([sys.executable, str(BENCH / "bench_channels_last.py"), "--quick",
                          "--models", "lenet5,fast_cnn", "--batch", "16"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)$", out.stdout, re.M)}
    assert set(rows) == {"lenet5", "fast_cnn"}
    for nchw, nhwc, ratio in rows.values():
        # the rates are printed rounded to whole images/s: the ratio recomputed from them is off by up to
        # the rounding's share of each rate (plus the ratio's own rounding to 2 decimals)
        slack = (nhwc + 0.5) / max(nchw - 0.5, 0.5) - nhwc / nchw + 0.005
        assert nchw > 0 and nhwc > 0 and ratio == pytest.approx(nhwc / nchw, abs=slack)
    threads = re.findall(r"^\s+(\d+)\s+([01])\s+(\d+)\s+([\d.]+)$", out.stdout, re.M)
    assert {(n, load) for n, load, _, _ in threads} >= {("1", "0"), ("1", "1")}
