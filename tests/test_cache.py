"""The artifact cache: atomic, locked, never serves a half-written folder."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from splitlib.cache import (
    CacheWarning,
    ReadOnlyCacheError,
    ResumableBatches,
    cached_artifact,
    manifest_path,
    stable_hash,
    verify_artifact,
)


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


# ----- verified on read ---------------------------------------------------------------------------------
def _table(path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"pair_id": ["a", "b", "c"], "loss_p": [1.0, 2.0, 3.0]}).to_parquet(path, index=False)


def _edit_table(path: Path, change) -> None:
    import pandas as pd

    change(pd.read_parquet(path)).to_parquet(path, index=False)


DAMAGE = {
    "edited losses": lambda p: _edit_table(p, lambda t: t.assign(loss_p=t.loss_p * 2)),
    "a missing row": lambda p: _edit_table(p, lambda t: t.iloc[:2]),
    "one unrelated column": lambda p: _edit_table(p, lambda t: t[["pair_id"]].rename(columns={"pair_id": "x"})),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "empty": lambda p: p.write_bytes(b""),
    "no manifest": lambda p: manifest_path(p).unlink(),
    "another key's manifest": lambda p: manifest_path(p).write_text(
        manifest_path(p).read_text().replace(p.name, "other.parquet")),
    "an unreadable manifest": lambda p: manifest_path(p).write_text("{"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_table_is_reported_once_moved_aside_and_rebuilt(tmp_path, damage):
    import pandas as pd

    final = tmp_path / "sweeps" / "key.parquet"
    builds = []
    cached_artifact(final, lambda tmp: (builds.append(1), _table(tmp)), made_by="test")
    original = pd.read_parquet(final)
    DAMAGE[damage](final)
    with pytest.warns(CacheWarning, match=re.escape(str(final))):
        again = cached_artifact(final, lambda tmp: (builds.append(1), _table(tmp)))
    assert len(builds) == 2, "the damaged artifact was computed again"
    pd.testing.assert_frame_equal(pd.read_parquet(again), original)
    assert (final.parent / ".bad-key.parquet").exists(), "the damaged copy is kept aside for inspection"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: the rebuilt artifact reads cleanly
        cached_artifact(final, lambda tmp: pytest.fail("rebuilt a verified artifact"))


def test_the_manifest_says_what_the_artifact_holds(tmp_path):
    final = cached_artifact(tmp_path / "key.parquet", _table, made_by="sweep")
    manifest = json.loads(manifest_path(final).read_text())
    assert manifest["key"] == "key.parquet" and manifest["made_by"] == "sweep"
    (entry,) = manifest["files"].values()
    assert entry["rows"] == 3 and entry["columns"] == ["pair_id", "loss_p"]
    assert entry["bytes"] == final.stat().st_size and len(entry["sha256"]) == 64
    assert verify_artifact(final) is None


@pytest.mark.parametrize("damage", ["zeroed weights", "an edited field", "a missing file", "an extra file"])
def test_a_damaged_folder_is_rebuilt(tmp_path, damage):
    final = tmp_path / "interventions" / "key"

    def build(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
        (folder / "intervention.json").write_text('{"layer": 2}')

    cached_artifact(final, build, folder=True)
    if damage == "zeroed weights":
        (final / "weights.bin").write_bytes(np.zeros(8, dtype=np.float32).tobytes())
    elif damage == "an edited field":
        (final / "intervention.json").write_text('{"layer": 3}')
    elif damage == "a missing file":
        (final / "weights.bin").unlink()
    else:
        (final / "notes.txt").write_text("?")
    assert verify_artifact(final) is not None
    with pytest.warns(CacheWarning, match="failed verification"):
        cached_artifact(final, build, folder=True)
    assert (final / "intervention.json").read_text() == '{"layer": 2}'
    assert sorted(p.name for p in final.iterdir()) == ["intervention.json", "weights.bin"]
    assert (tmp_path / "interventions" / ".bad-key").is_dir(), "the damaged copy is kept aside for inspection"


def test_a_damaged_batch_is_computed_again(tmp_path):
    folder = tmp_path / "key.partial"
    with pytest.raises(KeyboardInterrupt):
        with ResumableBatches(folder) as batches:
            batches.save(0, np.arange(3.0))
            batches.save(1, np.arange(4.0))
            raise KeyboardInterrupt
    (saved,) = folder.glob("batch-00000-*.npy")
    saved.write_bytes(saved.read_bytes()[:-8] + np.float64(7.0).tobytes())  # valid .npy, wrong value
    (folder / ".tmp-00002-dead.npy").write_bytes(b"half")  # a batch being written when the run died
    with ResumableBatches(folder) as batches:
        with pytest.warns(CacheWarning, match="fails its checksum"):
            assert batches.load(0) is None
        np.testing.assert_array_equal(batches.load(1), np.arange(4.0))
        assert not (folder / ".tmp-00002-dead.npy").exists()


# ----- a cache that cannot be written -------------------------------------------------------------------
@contextmanager
def _read_only(folder: Path) -> Iterator[Path]:
    """`folder` seen read-only: a read-only bind mount as root (who ignores permissions), else modes."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield folder
        finally:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        return
    view = folder.with_name(folder.name + "-read-only")
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root without the right to mount, so nothing is read-only: {mounted.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_cache_serves_complete_artifacts_and_names_missing_ones(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cached_artifact(cache / "sweeps" / "done.parquet", _table)
    before = sorted(p.name for p in (cache / "sweeps").iterdir())
    with _read_only(cache) as view:
        served = cached_artifact(view / "sweeps" / "done.parquet", lambda tmp: pytest.fail("recomputed"))
        assert served == view / "sweeps" / "done.parquet"
        with pytest.raises(ReadOnlyCacheError, match=r"new\.parquet.*cannot be written.*SPLITLIB_CACHE"):
            cached_artifact(view / "sweeps" / "new.parquet", _table)
        monkeypatch.setenv("SPLITLIB_READONLY_CACHE", "compute")
        computed = cached_artifact(view / "sweeps" / "new.parquet", _table)
        assert computed.is_file() and not computed.is_relative_to(view)
    assert sorted(p.name for p in (cache / "sweeps").iterdir()) == before, "nothing was written"


def test_a_damaged_artifact_in_a_read_only_cache_is_an_error(tmp_path):
    cache = tmp_path / "cache"
    final = cached_artifact(cache / "done.parquet", _table)
    DAMAGE["truncated"](final)
    with _read_only(cache) as view:
        with pytest.raises(ReadOnlyCacheError, match=r"done\.parquet.*failed verification.*bytes"):
            cached_artifact(view / "done.parquet", _table)


KINDS = {  # the artifacts' file kinds besides parquet tables and folders: captures and generations
    "activations.npz": lambda path: np.savez(open(path, "wb"), values=np.arange(6.0).reshape(2, 3)),
    "generations.json": lambda path: path.write_text(json.dumps(["an answer", "another"])),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_every_kind_of_file_is_checked(tmp_path, kind, damage):
    final = cached_artifact(tmp_path / kind, KINDS[kind])
    whole = final.read_bytes()
    final.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else whole.replace(b"a", b"b", 1))
    with pytest.warns(CacheWarning, match=kind):
        assert cached_artifact(final, KINDS[kind]).read_bytes() == whole
