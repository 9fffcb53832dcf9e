"""Cached artifacts of the real computations are verified on read: a sweep table or a trained
intervention that was edited on disk is never served, and what changes the numbers keys them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import counting_batches, tiny_model
from safetensors.torch import load_file, save_file

from splitlib import Intervention
from splitlib.cache import CacheWarning
from splitlib.profiles import EngineSettings, TrainConfig
from splitlib.sweep import run_sweep
from splitlib.train import train_intervention

LAYER = 2
GRID = [-2.0, 0.0, 1.0, 3.0]
CONFIG = TrainConfig(epochs=1, batch_size=3, grad_accum=1, lr=0.05, multipliers=(0.5, 1.0, 2.0))


def _sweep(tokenizer, pairs, **kwargs):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=3, gain=4.0)
    return run_sweep(model, tokenizer, pairs, intervention, GRID, progress=False, **kwargs)


@pytest.mark.parametrize("edit", ["losses", "a row", "a column"])
def test_an_edited_sweep_table_is_recomputed_not_served(cache_dir, tokenizer, pairs, edit):
    first = _sweep(tokenizer, pairs)
    (stored,) = (cache_dir / "sweeps").glob("*.parquet")
    raw = pd.read_parquet(stored)
    if edit == "losses":
        raw = raw.assign(sum_p=raw.sum_p * 0.5)
    elif edit == "a row":
        raw = raw.iloc[:-1]
    else:
        raw = raw.drop(columns=raw.columns[-1])
    raw.to_parquet(stored, index=False)
    with pytest.warns(CacheWarning, match=stored.name):
        again = _sweep(tokenizer, pairs)
    pd.testing.assert_frame_equal(again, first)


def test_a_damaged_batch_of_an_interrupted_sweep_is_computed_again(cache_dir, tokenizer, pairs, monkeypatch):
    settings = EngineSettings(pairs_per_row=2)
    reference = _sweep(tokenizer, pairs, settings=settings, cache=False)
    counting_batches(monkeypatch, dies_at=3)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tokenizer, pairs, settings=settings)
    (first_batch,) = (cache_dir / "sweeps").glob("*.partial/batch-00000-*.npy")
    first_batch.write_bytes(first_batch.read_bytes()[:-8] + np.float64(0.0).tobytes())
    calls = counting_batches(monkeypatch)
    with pytest.warns(CacheWarning, match="batch-00000"):
        resumed = _sweep(tokenizer, pairs, settings=settings)
    assert len(calls) == 2, "batch 0 (damaged) and batch 2 (never finished) are computed; batch 1 is reused"
    np.testing.assert_allclose(resumed.loss_p, reference.loss_p, atol=1e-6)


@pytest.mark.parametrize("damage", ["zeroed weights", "layer changed"])
def test_a_damaged_trained_intervention_is_retrained(cache_dir, tokenizer, pairs, damage):
    model = tiny_model("llama", vocab_size=49152)
    trained = train_intervention(model, tokenizer, pairs, "split", "vector", LAYER, CONFIG, progress=False)
    (folder,) = [p for p in (cache_dir / "interventions").iterdir() if p.is_dir() and not p.name.startswith(".")]
    if damage == "zeroed weights":
        weights = folder / "intervention.safetensors"
        save_file({name: torch.zeros_like(t) for name, t in load_file(weights).items()}, weights)
    else:
        meta = json.loads((folder / "intervention.json").read_text())
        (folder / "intervention.json").write_text(json.dumps({**meta, "layer": LAYER + 1}))
    with pytest.warns(CacheWarning, match=folder.name):
        again = train_intervention(model, tokenizer, pairs, "split", "vector", LAYER, CONFIG, progress=False)
    assert again.layer == LAYER and torch.equal(again.delta_b, trained.delta_b)


def test_the_thread_count_keys_a_sweep(cache_dir, tokenizer, pairs):
    threads = torch.get_num_threads()
    _sweep(tokenizer, pairs)
    try:
        torch.set_num_threads(threads + 1)
        _sweep(tokenizer, pairs)
    finally:
        torch.set_num_threads(threads)
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == 2


def test_a_sweep_in_a_read_only_cache(tmp_path, tokenizer, pairs, monkeypatch):
    from test_cache import _read_only

    from splitlib.cache import ReadOnlyCacheError

    cache = tmp_path / "cache"
    monkeypatch.setenv("SPLITLIB_CACHE", str(cache))
    first = _sweep(tokenizer, pairs)
    with _read_only(cache) as view:
        monkeypatch.setenv("SPLITLIB_CACHE", str(view))
        pd.testing.assert_frame_equal(_sweep(tokenizer, pairs), first)
        with pytest.raises(ReadOnlyCacheError, match="is not in the cache"):
            _sweep(tokenizer, pairs, split="train", loss="sum", max_answer_tokens=1)
        monkeypatch.setenv("SPLITLIB_READONLY_CACHE", "compute")
        uncached = _sweep(tokenizer, pairs, max_answer_tokens=1)
        pd.testing.assert_frame_equal(uncached, _sweep(tokenizer, pairs, max_answer_tokens=1, cache=False))


def test_a_cached_sweep_table_says_where_it_came_from(cache_dir, tokenizer, pairs):
    from splitlib.interop import read_provenance

    _sweep(tokenizer, pairs)
    (stored,) = (cache_dir / "sweeps").glob("*.parquet")
    record = read_provenance(stored)
    assert record["layer"] == LAYER and record["form"] == "vector" and record["multipliers"] == GRID
    assert record["data"]["pairs"] == len(pairs) and record["code_version"].startswith("splitlib")
