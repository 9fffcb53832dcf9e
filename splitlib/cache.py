"""Where splitlib keeps what it computes once: an atomic, locked, content-keyed cache.

Every artifact (a dequantised model, later sweeps and trained interventions) lives in a folder
named by a hash of everything that determines it. A folder only ever appears whole: it is built
under a temporary name and renamed into place, so a killed run leaves nothing a reader picks up.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
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


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it is renamed to `final` in one step.

    If the body raises, the temporary folder is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # another writer won the race; theirs is as good as ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_directory(final: str | Path, build: Any) -> Path:
    """Return `final`, calling `build(tmp_folder)` first if it does not exist yet.

    Safe against concurrent callers (a lock) and killed runs (an atomic rename).
    """
    final = Path(final)
    if final.is_dir():
        return final
    with file_lock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # built by another process while we waited
            return final
        with atomic_directory(final) as tmp:
            build(tmp)
    return final


def cached_file(final: str | Path, write: Any) -> Path:
    """Return `final`, calling `write(partial_path)` first if it does not exist yet; the partial
    file is renamed into place only once written, under a lock (the file twin of `cached_directory`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if not final.is_file():
            partial = final.parent / f".{final.name}.part-{os.getpid()}"
            try:
                write(partial)
                os.replace(partial, final)
            finally:
                partial.unlink(missing_ok=True)
    return final
