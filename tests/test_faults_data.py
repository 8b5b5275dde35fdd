"""FAULTS.md D11: a CIFAR-10 batch file holding fewer images than the others is refused by name
(it used to train silently on 9,995 fewer images)."""

from __future__ import annotations

import pickle

from test_data_files import _cifar_batch, write_cifar

from cnnbench.data import cifar


def test_a_short_cifar_batch_is_refused_by_name(cli, tmp_path, tracking_uri, runs_in, experiment):
    write_cifar(tmp_path, per_batch=40)
    (tmp_path / cifar.FOLDER / "data_batch_1").write_bytes(pickle.dumps(_cifar_batch(5, 0), protocol=2))
    result = cli("train", "--dataset", "cifar10", "--no-download", "--data-dir", tmp_path, "--epochs", "1",
                 "--tracking-uri", tracking_uri, "--experiment", experiment, "--quiet", "--no-tsne")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and " INFO mlflow" not in line]
    assert len(lines) == 1 and "data_batch_1 holds 5 images where every other CIFAR-10 batch holds 40" in lines[0], lines
    assert runs_in(experiment) == []


def test_consistent_cifar_batches_load(tmp_path):
    write_cifar(tmp_path, per_batch=7)
    bundle = cifar.load(data_dir=tmp_path, download=False)
    assert len(bundle.train.labels) == 35 and len(bundle.test.labels) == 7
