"""The campaign worker helpers that need no store: the thread split (restored for the command's
own process), transient errors, exit codes, and the spec file a worker is started with."""

from __future__ import annotations

import os
import stat

import torch

from cnnbench.campaign import workers


def test_thread_share_gives_a_worker_its_share_and_restores_the_process_setting():
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    try:
        torch.set_num_threads(cores)
        with workers.thread_share(2):
            assert torch.get_num_threads() == max(1, cores // 2)
        assert torch.get_num_threads() == cores
        try:
            with workers.thread_share(4 * cores):
                assert torch.get_num_threads() == 1
                raise KeyboardInterrupt  # an interrupted worker 0 restores it too
        except KeyboardInterrupt:
            pass
        assert torch.get_num_threads() == cores
        with workers.thread_share(1):  # one worker: the process keeps what it has
            assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_transient_errors_are_recognised_through_their_causes():
    try:
        try:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.dataset_uuid")
        except RuntimeError as inner:
            raise ValueError("log_inputs failed") from inner
    except ValueError as err:
        assert workers.is_transient(err)
    assert not workers.is_transient(ValueError("loss is NaN at epoch 2"))


def test_exit_codes_name_the_signal():
    assert workers.exit_code_for(KeyboardInterrupt("SIGTERM received")) == 143
    assert workers.exit_code_for(KeyboardInterrupt("SIGHUP received")) == 143
    assert workers.exit_code_for(KeyboardInterrupt()) == 130


def test_a_worker_spec_is_private_and_gone_once_read(tmp_path):
    path = workers.write_spec({"storage": "postgresql://u:secret@h/db", "index": 1}, tmp_path, "w1.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert workers.read_spec(path) == {"storage": "postgresql://u:secret@h/db", "index": 1}
    assert not path.exists()
