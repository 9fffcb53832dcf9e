"""Where splitlib keeps what it computes once: an atomic, locked, content-keyed cache.

Every artifact (the dequantised model, sweeps, captures and measures, trained interventions,
generations) is a file or folder named by a hash of everything that determines it (for the
engine's artifacts, `engine.artifact_key`), written by `cached_artifact`: built under a temporary
name and renamed into place under a lock, so a killed run leaves nothing a reader picks up.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CACHE_ENV = "SPLITLIB_CACHE"
_TMP_PREFIX = ".tmp-"


def cache_root() -> Path:
    """The per-user cache folder: $SPLITLIB_CACHE, else $XDG_CACHE_HOME/splitlib, else ~/.cache/splitlib."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "splitlib"


def stable_hash(payload: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable value; dict order does not matter."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16) -> str:
    """sha256 of a file's bytes, read in chunks (the embedded GGUF is ~100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def source_digest(*modules: str, length: int = 16) -> str:
    """A hash of splitlib modules' source, so a cached result is never served after the code
    that computed it changed (a version number can be forgotten; a hash cannot)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in sorted(modules):
        digest.update(name.encode() + (package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:length]


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock, so two processes never build the same artifact at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_artifact(final: str | Path, build: Callable[[Path], object], *, folder: bool = False) -> Path:
    """Return `final`, calling `build(tmp)` first if it does not exist yet: the one way splitlib
    writes an artifact.

    `build` writes a file at `tmp` (or, with `folder`, fills the empty folder `tmp`); it is
    renamed to `final` in one step once whole, under a lock, so concurrent callers build once and a
    killed run leaves no artifact. Temporary leftovers of killed runs for the same name are removed
    first (the lock proves nobody is still writing them).
    """
    final = Path(final)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if final.exists():  # built by another process while we waited
            return final
        for leftover in final.parent.glob(f"{_TMP_PREFIX}{final.name}-*"):
            _remove(leftover)
        tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        if folder:
            tmp.mkdir()
        try:
            build(tmp)
            if not tmp.exists():
                raise RuntimeError(f"building {final} wrote nothing at {tmp}")
            os.replace(tmp, final)
        finally:
            _remove(tmp)
    return final


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class ResumableBatches:
    """Finished batches of a long computation kept in `folder` (one `.npy` each, written
    atomically), so a killed run resumes where it stopped; the folder is removed once the
    computation inside the `with` block has finished."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __enter__(self) -> ResumableBatches:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, number: int) -> Path:
        return self.folder / f"batch-{number:05d}.npy"

    def load(self, number: int) -> Any:
        """Batch `number`'s saved result, or None if it was not finished."""
        import numpy as np

        path = self._path(number)
        return np.load(path) if path.is_file() else None

    def save(self, number: int, values: Any) -> None:
        import numpy as np

        partial = self.folder / f"{_TMP_PREFIX}{number:05d}-{os.getpid()}.npy"
        with open(partial, "wb") as handle:
            np.save(handle, values)
        os.replace(partial, self._path(number))
