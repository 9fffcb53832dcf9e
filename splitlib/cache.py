"""Where splitlib keeps what it computes once: an atomic, locked, content-keyed cache.

Every artifact (the dequantised model, sweeps, captures and measures, trained interventions,
generations) is a file or folder named by a hash of everything that determines it (for the
engine's artifacts, `engine.artifact_key`), written by `cached_artifact`: built under a temporary
name and renamed into place under a lock, so a killed run leaves nothing a reader picks up, then
described by a manifest (checksums, rows and columns) that every read checks, so an artifact that
was truncated or edited is never served.
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

CACHE_ENV = "SPLITLIB_CACHE"
READ_ONLY_ENV = "SPLITLIB_READONLY_CACHE"
_TMP_PREFIX = ".tmp-"
_BAD_PREFIX = ".bad-"


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
    """Exclusive lock on the file `path`, so two processes never build the same artifact at once.

    The `filelock` package (flock on Unix, msvcrt on Windows, a lock file where neither exists) rather
    than `fcntl`, so splitlib imports and runs on every platform; imported here, not at the top, so
    that `import splitlib` does not print filelock's warning on a system without flock."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


class CacheWarning(UserWarning):
    """A cached artifact failed verification and was moved aside to be computed again."""


class ReadOnlyCacheError(PermissionError):
    """An artifact is missing from, or damaged in, a cache this process cannot write."""


def manifest_path(final: str | Path) -> Path:
    """Where an artifact's manifest lives: beside it, written after it."""
    final = Path(final)
    return final.with_name(final.name + MANIFEST_SUFFIX)


def cached_artifact(final: str | Path, build: Callable[[Path], object], *, folder: bool = False,
                    made_by: str = "") -> Path:
    """Return `final`, verified against its manifest, calling `build(tmp)` first if it is missing
    or damaged: the one way splitlib writes and reads an artifact.

    `build` writes a file at `tmp` (or, with `folder`, fills the empty folder `tmp`); it is
    renamed to `final` in one step once whole, under a lock, so concurrent callers build once and a
    killed run leaves no artifact; its manifest (key, `made_by`, checksums, rows and columns of
    tables) is written last. A complete artifact is read without a lock, so a read-only cache
    serves it; a damaged one is reported once, moved aside and rebuilt.
    """
    final = Path(final)
    problem = verify_artifact(final)
    if problem is None:
        return final
    with ExitStack() as stack:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(final.parent / f".{final.name}.lock"))
        except OSError as error:
            if error.errno not in _READ_ONLY_ERRORS:
                raise
            return _read_only(final, problem, build, folder)
        problem = verify_artifact(final)  # another process may have built it while we waited
        if problem is None:
            return final
        if problem != _MISSING:
            _move_aside(final, problem)
        for leftover in final.parent.glob(f"{_TMP_PREFIX}{final.name}-*"):
            _remove(leftover)
        _build(final, build, folder, made_by)
    return final


def _build(final: Path, build: Callable[[Path], object], folder: bool, made_by: str) -> None:
    """Build at a temporary name, rename into place, then write the manifest (atomically)."""
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    if folder:
        tmp.mkdir()
    try:
        build(tmp)
        if not tmp.exists():
            raise RuntimeError(f"building {final} wrote nothing at {tmp}")
        manifest = {"key": final.name, "made_by": made_by, "folder": folder, "files": _describe(tmp, final.name)}
        os.replace(tmp, final)
        write_atomically(manifest_path(final), json.dumps(manifest, indent=1, sort_keys=True).encode())
    finally:
        _remove(tmp)


# ----- verification -----------------------------------------------------------------------------------
MANIFEST_SUFFIX = ".manifest.json"
_MISSING = "missing"
_READ_ONLY_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM}
_verified: dict[Path, tuple] = {}  # artifacts this process has verified, by the file stats it saw


def verify_artifact(final: str | Path) -> str | None:
    """None if `final` matches its manifest; else what is wrong ("missing" when nothing is there).

    Checksums are recomputed once per process and again whenever a file's size or time changes.
    """
    final = Path(final)
    manifest_file = manifest_path(final)
    if not final.exists():
        return _MISSING if not manifest_file.exists() else "the manifest is there but the artifact is not"
    if not manifest_file.is_file():
        return "it has no manifest (a write was interrupted, or an older splitlib made it)"
    stats = _stats(final, manifest_file)
    if _verified.get(final) == stats:
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
        expected, key = manifest["files"], manifest["key"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"its manifest {manifest_file} is unreadable"
    if key != final.name:
        return f"its manifest is for {key!r}"
    problem = _compare(_describe(final, final.name), expected)
    if problem is None:
        _verified[final] = stats
    return problem


def _compare(found: dict[str, dict], expected: dict[str, dict]) -> str | None:
    for name in sorted(set(expected) | set(found)):
        if name not in found:
            return f"{name or 'the file'} is missing"
        if name not in expected:
            return f"{name} is not in the manifest"
        have, want = found[name], expected[name]
        if have["bytes"] != want["bytes"]:
            return f"{name or 'the file'} has {have['bytes']} bytes where {want['bytes']} were written (truncated?)"
        if have != want:
            return f"{name or 'the file'} differs from what was written (checksum, rows or columns)"
    return None


def _describe(path: Path, name: str) -> dict[str, dict]:
    """Size and sha256 of each file ("" names a single-file artifact), with the rows and columns
    of parquet tables so a manifest also says what a table holds."""
    files = {"": (path, name)} if path.is_file() else {
        str(item.relative_to(path)): (item, item.name) for item in sorted(path.rglob("*")) if item.is_file()}
    described = {}
    for relative, (item, shown_as) in files.items():
        entry: dict[str, Any] = {"bytes": item.stat().st_size, "sha256": file_digest(item, length=64)}
        if shown_as.endswith(".parquet"):
            entry.update(_table_shape(item))
        described[relative] = entry
    return described


def _table_shape(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
    except Exception:  # a damaged table is reported by the checksum; its shape is unknown
        return {"rows": None, "columns": None}
    return {"rows": metadata.num_rows, "columns": list(metadata.schema.names)}


def _stats(final: Path, manifest_file: Path) -> tuple:
    items = [final] if final.is_file() else sorted(final.rglob("*"))
    return tuple((str(item), item.stat().st_size, item.stat().st_mtime_ns) for item in [*items, manifest_file])


def _move_aside(final: Path, problem: str) -> None:
    """Keep a damaged artifact for inspection (the latest one per key), out of the reader's way."""
    aside = final.with_name(f"{_BAD_PREFIX}{final.name}")
    _remove(aside)
    if final.exists():
        os.replace(final, aside)
    manifest_path(final).unlink(missing_ok=True)
    _verified.pop(final, None)
    warnings.warn(f"splitlib: the cached artifact {final} failed verification: {problem}. "
                  f"Moved it to {aside}; computing it again.", CacheWarning, stacklevel=3)


def _read_only(final: Path, problem: str, build: Callable[[Path], object], folder: bool) -> Path:
    """A cache that cannot be written: serve nothing unverified; compute without caching only
    where the user allowed it with $SPLITLIB_READONLY_CACHE=compute."""
    where = f"{final} (the cache {final.parent} cannot be written)"
    if problem != _MISSING:
        raise ReadOnlyCacheError(f"the cached artifact {where} failed verification: {problem}")
    if os.environ.get(READ_ONLY_ENV) != "compute":
        raise ReadOnlyCacheError(
            f"the artifact {where} is not in the cache. Point ${CACHE_ENV} at a writable folder, or set "
            f"${READ_ONLY_ENV}=compute to compute it without caching.")
    scratch = Path(tempfile.mkdtemp(prefix="splitlib-uncached-"))
    atexit.register(shutil.rmtree, scratch, True)
    target = scratch / final.name
    if folder:
        target.mkdir()
    build(target)
    return target


def write_atomically(path: Path, content: bytes) -> None:
    """Write at a temporary name beside `path`, then rename: a reader never sees half a file."""
    partial = path.with_name(f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        partial.write_bytes(content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class ResumableBatches:
    """Finished batches of a long computation kept in `folder` (one `.npy` each, written
    atomically, its checksum in its name), so a killed run resumes where it stopped; a batch that
    fails its checksum is reported and computed again. The folder is removed once the computation
    inside the `with` block has finished."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.kept = True

    def __enter__(self) -> ResumableBatches:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a read-only cache computing without caching: nothing to resume
            if error.errno not in _READ_ONLY_ERRORS:
                raise
            self.kept = False
            return self
        for leftover in self.folder.glob(f"{_TMP_PREFIX}*"):  # a batch being written when the run died
            leftover.unlink(missing_ok=True)
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is None and self.kept:
            shutil.rmtree(self.folder, ignore_errors=True)

    def load(self, number: int) -> Any:
        """Batch `number`'s saved result, or None if it was not finished (or is damaged)."""
        import numpy as np

        if not self.kept:
            return None
        for path in self.folder.glob(f"batch-{number:05d}-*.npy"):
            checksum = path.stem.rsplit("-", 1)[1]
            if file_digest(path) == checksum:
                return np.load(path, allow_pickle=False)
            warnings.warn(f"splitlib: the saved batch {path} fails its checksum; computing it again.",
                          CacheWarning, stacklevel=2)
            path.unlink()
        return None

    def save(self, number: int, values: Any) -> None:
        import numpy as np

        if not self.kept:
            return
        partial = self.folder / f"{_TMP_PREFIX}{number:05d}-{uuid.uuid4().hex[:8]}.npy"
        with open(partial, "wb") as handle:
            np.save(handle, values, allow_pickle=False)
        os.replace(partial, self.folder / f"batch-{number:05d}-{file_digest(partial)}.npy")
