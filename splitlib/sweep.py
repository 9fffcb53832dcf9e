"""The m-sweep: every pair of a split, every multiplier of a grid, one intervention.

The engine (`splitlib.engine`) runs the layers below the intervention once per batch and the
layers above once per group of multipliers; this module turns its token losses into one tidy table
per sweep (L_p, L_n, PrefOdds, UtilOdds per pair and m), optionally with hidden states captured in
the same pass, and caches the table as parquet under a key of everything that determines it; an
interrupted sweep resumes from its last finished batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import ResumableBatches, cache_root, cached_artifact
from .checks import check_multipliers, check_positive_int, check_type  # check_multipliers: also splitlib.sweep's
from .data import PolarityPair, check_pairs
from .engine import (
    artifact_key,
    collate_pairs,
    encode_pairs,
    pad_token_id,
    plan_batches,
    resolved,
    scored_reads,
    steered_batch,
)
from .interventions import Intervention, check_intervention
from .profiles import EngineSettings
from .provenance import with_provenance
from .scoring import EncodedPair, Tokenizer, check_loss, pref_odds, reduce_nll, token_nll, util_odds

COLUMNS = ["pair_id", "split", "m", "loss_p", "loss_n", "pref_odds", "util_odds", "clamped"]
SWEEP_CODE = ("sweep",)  # the modules whose source keys a sweep (beside the engine's own)


@dataclass(frozen=True)
class Capture:
    """Which hidden states a sweep also records, at which positions (see `geometry.Activations`)."""

    hidden_states: tuple[int, ...]
    tokens_per_answer: int = 8


@dataclass
class SweepResult:
    """Summed token losses of every sequence at every m (sequences A_p, A_n per pair), their token
    counts, and, when a capture was asked for, the hidden states of the same pass. Both loss kinds
    follow from the sums, so one pass (and one cached artifact) serves both."""

    pairs: Sequence[PolarityPair]
    multipliers: list[float]
    summed: np.ndarray  # (n_multipliers, 2 * n_pairs)
    tokens: np.ndarray  # (2 * n_pairs,) scored tokens per sequence
    hidden: np.ndarray | None = None  # (n_multipliers, n_hidden_states, n_positions, width)
    where: list[tuple[int, int, int]] | None = None  # (pair index, answer, position) per captured row

    def table(self, split: str, loss: str) -> pd.DataFrame:
        """One row per (pair, m) with L_p, L_n (`loss`: "mean" or "sum" over tokens) and the odds."""
        losses = self.summed / self.tokens if check_loss(loss) == "mean" else self.summed
        return _table(self.pairs, split, self.multipliers, losses)

    def raw(self) -> pd.DataFrame:
        """The loss-agnostic form that the cache keeps."""
        return pd.DataFrame({
            "pair_id": np.tile([p.id for p in self.pairs], len(self.multipliers)),
            "m": np.repeat(np.asarray(self.multipliers, dtype=float), len(self.pairs)),
            "sum_p": self.summed[:, 0::2].reshape(-1), "sum_n": self.summed[:, 1::2].reshape(-1),
            "tokens_p": np.tile(self.tokens[0::2], len(self.multipliers)),
            "tokens_n": np.tile(self.tokens[1::2], len(self.multipliers)),
        })

    @classmethod
    def from_raw(cls, raw: pd.DataFrame, pairs: Sequence[PolarityPair], multipliers: list[float]) -> SweepResult:
        k, n = len(multipliers), len(pairs)
        summed = np.empty((k, 2 * n))
        summed[:, 0::2] = raw.sum_p.to_numpy().reshape(k, n)
        summed[:, 1::2] = raw.sum_n.to_numpy().reshape(k, n)
        tokens = np.empty(2 * n)
        tokens[0::2], tokens[1::2] = raw.tokens_p.to_numpy()[:n], raw.tokens_n.to_numpy()[:n]
        return cls(pairs, multipliers, summed, tokens)


def sweep_pass(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], intervention: Intervention | None,
               multipliers: list[float], *, encoded: Sequence[EncodedPair], settings: EngineSettings,
               capture: Capture | None = None, progress: bool = True, label: str = "sweep",
               resume: ResumableBatches | None = None) -> SweepResult:
    """The engine over every batch of a split: summed losses, and with `capture` the hidden states."""
    from tqdm.auto import tqdm

    settings = resolved(settings, model)
    device = next(model.parameters()).device
    summed = np.empty((len(multipliers), 2 * len(encoded)))
    tokens = np.array([len(answer) for pair in encoded for answer in (pair.positive, pair.negative)], dtype=float)
    hidden_parts, where = [], []
    label = f"{label} ({intervention.form if intervention else 'no intervention'})"
    for number, indices in enumerate(tqdm(plan_batches(encoded, settings), desc=label, disable=not progress,
                                          unit="batch")):
        columns = [j for i in indices for j in (2 * i, 2 * i + 1)]
        done = resume.load(number) if resume is not None else None
        if done is not None:
            summed[:, columns] = done
            continue
        batch = collate_pairs([encoded[i] for i in indices], pad_token_id(tokenizer), device, packed=True, model=model,
                              pad_to=settings.pad_to)
        keep = None
        if capture is not None:
            keep_index, batch_where = scored_reads(batch.lengths, indices, capture.tokens_per_answer)
            keep = torch.as_tensor(keep_index, device=device)
            where += batch_where
        result = steered_batch(model, batch, intervention, multipliers, settings,
                               capture.hidden_states if capture else (), keep)
        per_sequence = torch.stack([reduce_nll(row, batch.lengths, "sum") for row in result.nll]).cpu().numpy()
        summed[:, columns] = per_sequence
        if capture is not None:
            hidden_parts.append(np.stack([result.hidden[i].numpy() for i in capture.hidden_states], axis=1))
        if resume is not None:
            resume.save(number, per_sequence)
    if capture is None:
        return SweepResult(pairs, multipliers, summed, tokens)
    return SweepResult(pairs, multipliers, summed, tokens, np.concatenate(hidden_parts, axis=2), where)


def _table(pairs: Sequence[PolarityPair], split: str, multipliers: Sequence[float], losses: np.ndarray) -> pd.DataFrame:
    """Tidy rows from (n_multipliers, 2 * n_pairs) losses laid out A_p, A_n per pair."""
    loss_p, loss_n = losses[:, 0::2], losses[:, 1::2]
    util, clamped = util_odds(loss_p, loss_n)
    grid = np.repeat(np.asarray(multipliers, dtype=float), len(pairs))
    return pd.DataFrame(
        {
            "pair_id": np.tile([p.id for p in pairs], len(multipliers)),
            "split": split,
            "m": grid,
            "loss_p": loss_p.reshape(-1),
            "loss_n": loss_n.reshape(-1),
            "pref_odds": pref_odds(loss_p, loss_n).reshape(-1),
            "util_odds": util.reshape(-1),
            "clamped": clamped.reshape(-1),
        }
    )[COLUMNS]


# ----- the public sweep ---------------------------------------------------------------------------------
def sweep_key(model: nn.Module, pairs: Sequence[PolarityPair], encoded: Sequence[EncodedPair],
              intervention: Intervention | None, multipliers: Sequence[float], settings: EngineSettings) -> str:
    """Everything that determines a sweep's losses: the model, the pairs' ids and token ids (so
    the tokenizer, the template and any truncation count), the update, the grid and the batching.
    Not the loss kind nor the split's name, which are applied when the table is read."""
    return artifact_key(SWEEP_CODE, model, pairs, intervention, multipliers=list(multipliers),
                        tokens=[(p.prompt, p.positive, p.negative) for p in encoded],
                        settings=resolved(settings, model))


def check_sweep(model: nn.Module, pairs: Sequence[PolarityPair], intervention: Intervention | None,
                multipliers: object, loss: str, max_answer_tokens: object = None,
                settings: object = None) -> list[float]:
    """The checks every sweep makes before it computes or writes anything; returns the grid as floats."""
    check_loss(loss)
    check_pairs(pairs, "sweep")
    grid = check_multipliers(multipliers, intervention)
    check_positive_int("max_answer_tokens", max_answer_tokens, optional=True)
    if settings is not None:
        check_type("settings", settings, EngineSettings)
    check_intervention(model, intervention)
    return grid


def _sweep_path(key: str) -> Path:
    return cache_root() / "sweeps" / f"{key}.parquet"


def store_sweep(key: str, result: SweepResult, model: nn.Module, intervention: Intervention | None) -> None:
    """Put losses computed elsewhere (a pass that also captured hidden states) where `run_sweep`
    with the same key finds them."""
    cached_artifact(_sweep_path(key), lambda tmp: write_table(result.raw(), tmp, model, result.pairs, intervention,
                                                              multipliers=result.multipliers), made_by="sweep")


def write_table(frame: pd.DataFrame, path: Path, model: nn.Module, pairs: Sequence[PolarityPair],
                intervention: Intervention | None, **fields: object) -> None:
    """`frame` as parquet with its provenance inside (model, layer, form, data, code version)."""
    import pyarrow.parquet as pq

    layer, form = (intervention.layer, intervention.form) if intervention is not None else (None, "none")
    pq.write_table(with_provenance(frame, model=model, layer=layer, data=pairs, form=form, **fields), path)


def run_sweep(
    model: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[PolarityPair],
    intervention: Intervention | None,
    multipliers: Sequence[float],
    *,
    split: str = "test",
    loss: str = "mean",
    max_answer_tokens: int | None = None,
    settings: EngineSettings | None = None,
    cache: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every pair at every multiplier: one row per (pair, m) with L_p, L_n, PrefOdds,
    UtilOdds and whether the utility probability sum was clamped.

    With `cache`, the summed losses are stored as parquet under a key of all inputs; a second
    call (with either loss kind) reads them, an interrupted call resumes from the last finished
    batch, and concurrent callers wait for one another instead of both computing.
    """
    grid = check_sweep(model, pairs, intervention, multipliers, loss, max_answer_tokens, settings)
    settings = settings or EngineSettings()
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    options: dict[str, Any] = dict(encoded=encoded, settings=settings, progress=progress, label=f"sweep {split}")
    if not cache:
        return sweep_pass(model, tokenizer, pairs, intervention, grid, **options).table(split, loss)
    target = _sweep_path(sweep_key(model, pairs, encoded, intervention, grid, settings))

    def write(tmp: Path) -> None:
        with ResumableBatches(target.with_suffix(".partial")) as resume:
            result = sweep_pass(model, tokenizer, pairs, intervention, grid, resume=resume, **options)
            write_table(result.raw(), tmp, model, pairs, intervention, multipliers=grid)

    raw = pd.read_parquet(cached_artifact(target, write, made_by="sweep"))
    return SweepResult.from_raw(raw, pairs, grid).table(split, loss)


def naive_sweep(
    model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], intervention: Intervention | None,
    multipliers: Sequence[float], *, split: str = "test", loss: str = "mean", max_answer_tokens: int | None = None,
) -> pd.DataFrame:
    """The reference code's loss mode: one full hooked forward per pair per multiplier, full logits.
    The engine must agree with it; it exists to check and to time the engine."""
    grid = check_sweep(model, pairs, intervention, multipliers, loss, max_answer_tokens)
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device = next(model.parameters()).device
    losses = np.empty((len(grid), 2 * len(encoded)))
    with torch.no_grad():
        for k, m in enumerate(grid):
            for i, pair in enumerate(encoded):
                batch = collate_pairs([pair], pad_token_id(tokenizer), device, packed=False)
                steering = batch.multipliers(torch.tensor([m] * batch.n_rows, device=device))
                with intervention.apply(model, steering) if intervention is not None else _nothing():
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                nll = token_nll(logits[batch.rows, batch.cols], batch.targets)
                losses[k, 2 * i : 2 * i + 2] = reduce_nll(nll, batch.lengths, check_loss(loss)).cpu().numpy()
    return _table(pairs, split, grid, losses)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def precision_noise(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair],
                    intervention: Intervention | None, multipliers: Sequence[float], *,
                    dtype: torch.dtype = torch.bfloat16, loss: str = "mean",
                    settings: EngineSettings | None = None) -> pd.DataFrame:
    """How far a sweep in `dtype` (bfloat16, as the paper's models run) lands from the same sweep in
    float32: per m, the largest difference over pairs and the difference of the means, for
    PrefOdds and UtilOdds. The size of rounding noise to set beside an effect. (A copy of the
    model is made in whichever precision it is not already in.)"""
    import copy

    def in_precision(wanted: torch.dtype) -> nn.Module:
        return model if next(model.parameters()).dtype == wanted else copy.deepcopy(model).to(wanted)

    options: dict[str, Any] = dict(loss=loss, settings=settings, progress=False)  # cached: shared with sweeps
    exact = run_sweep(in_precision(torch.float32), tokenizer, pairs, intervention, multipliers, **options)
    rounded = run_sweep(in_precision(dtype), tokenizer, pairs, intervention, multipliers, **options)
    difference = exact[["m", "pref_odds", "util_odds"]].assign(
        pref_odds=(rounded.pref_odds - exact.pref_odds), util_odds=(rounded.util_odds - exact.util_odds))
    grouped = difference.groupby("m")
    return pd.DataFrame({
        "largest_pref_odds": grouped.pref_odds.apply(lambda d: d.abs().max()),
        "largest_util_odds": grouped.util_odds.apply(lambda d: d.abs().max()),
        "mean_pref_odds": grouped.pref_odds.mean().abs(),
        "mean_util_odds": grouped.util_odds.mean().abs(),
    }).reset_index()
