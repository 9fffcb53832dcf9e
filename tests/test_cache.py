"""The artifact cache: atomic, locked, never serves a half-written folder."""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from splitlib.cache import ResumableBatches, cached_artifact, stable_hash


def test_stable_hash_ignores_key_order_and_sees_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_a_failed_build_leaves_nothing(tmp_path):
    final = tmp_path / "artifact"

    def killed(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"12")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cached_artifact(final, killed, folder=True)
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".artifact.lock"]


def test_a_build_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="wrote nothing"):
        cached_artifact(tmp_path / "key.bin", lambda tmp: None)
    assert not (tmp_path / "key.bin").exists()


def test_resumable_batches_keep_finished_batches_until_done(tmp_path):
    folder = tmp_path / "key.partial"
    with pytest.raises(KeyboardInterrupt):
        with ResumableBatches(folder) as batches:
            batches.save(0, np.arange(3.0))
            raise KeyboardInterrupt
    with ResumableBatches(folder) as batches:
        np.testing.assert_array_equal(batches.load(0), np.arange(3.0))
        assert batches.load(1) is None
    assert not folder.exists()


def test_cached_directory_builds_once(tmp_path):
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "value.txt").write_text("42")

    first = cached_artifact(tmp_path / "x", build, folder=True)
    second = cached_artifact(tmp_path / "x", build, folder=True)
    assert first == second and (first / "value.txt").read_text() == "42"
    assert len(calls) == 1


def test_a_leftover_temporary_folder_is_never_picked_up(tmp_path):
    (tmp_path / ".tmp-x-deadbeef").mkdir()  # what a killed run leaves behind
    (tmp_path / ".tmp-x-deadbeef" / "value.txt").write_text("half")
    result = cached_artifact(tmp_path / "x", lambda folder: (folder / "value.txt").write_text("whole"), folder=True)
    assert (result / "value.txt").read_text() == "whole"
    assert not (tmp_path / ".tmp-x-deadbeef").exists(), "a killed run's leftovers are removed"


def _slow_build(final: str, log: str) -> None:
    def build(folder: Path) -> None:
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        (folder / "value.txt").write_text("done")

    cached_artifact(final, build, folder=True)


def test_concurrent_builders_build_once(tmp_path):
    log = tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_slow_build, args=(str(tmp_path / "x"), str(log))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert log.read_text() == "built\n"
    assert (tmp_path / "x" / "value.txt").read_text() == "done"


def test_a_cached_file_appears_only_when_written_whole(tmp_path):
    target = tmp_path / "kind" / "key.bin"

    def fail(path):
        path.write_bytes(b"half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed"):
        cached_artifact(target, fail)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == [".key.bin.lock"]
    calls = []
    assert cached_artifact(target, lambda path: calls.append(path.write_bytes(b"whole"))).read_bytes() == b"whole"
    assert cached_artifact(target, lambda path: calls.append("again")).read_bytes() == b"whole"
    assert len(calls) == 1
