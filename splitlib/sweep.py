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

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import ResumableBatches, cache_root, cached_artifact
from .data import PolarityPair
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
from .interventions import Intervention
from .profiles import EngineSettings
from .scoring import check_loss, pref_odds, reduce_nll, token_nll, util_odds

COLUMNS = ["pair_id", "split", "m", "loss_p", "loss_n", "pref_odds", "util_odds", "clamped"]
SWEEP_CODE = ("sweep",)  # the modules whose source keys a sweep (beside the engine's own)


def check_multipliers(multipliers: object, intervention: Intervention | None, what: str = "sweep") -> list[float]:
    """A grid as a list of floats: any sequence or array, non-empty, finite, without repeats, and
    m != 0 only with an intervention; else a ValueError naming the problem."""
    values = np.asarray(multipliers, dtype=float).reshape(-1) if not isinstance(multipliers, str) else None
    if values is None or values.size == 0:
        raise ValueError(f"{what} needs at least one multiplier, got {multipliers!r}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"multipliers must be finite, got {values.tolist()}")
    if len(np.unique(values)) != len(values):
        raise ValueError(f"the grid repeats a multiplier: {values.tolist()}")
    if intervention is None and np.any(values != 0):
        raise ValueError("without an intervention only m = 0 is meaningful; pass multipliers=[0.0]")
    return [float(v) for v in values]


@dataclass(frozen=True)
class Capture:
    """Which hidden states a sweep also records, at which positions (see `geometry.Activations`)."""

    hidden_states: tuple[int, ...]
    tokens_per_answer: int = 8


@dataclass
class SweepResult:
    """A sweep's table and, when a capture was asked for, the hidden states of the same pass."""

    table: pd.DataFrame
    hidden: np.ndarray | None = None  # (n_multipliers, n_hidden_states, n_positions, width)
    where: list[tuple[int, int, int]] | None = None  # (pair index, answer, position) per captured row


def sweep_pass(model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair], intervention: Intervention | None,
               multipliers: Sequence[float], *, split: str, loss: str, max_answer_tokens: int | None,
               settings: EngineSettings, capture: Capture | None = None, progress: bool = True,
               resume: ResumableBatches | None = None) -> SweepResult:
    """The engine over every batch of a split: losses, and with `capture` the hidden states."""
    from tqdm.auto import tqdm


    settings = resolved(settings, model)
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device = next(model.parameters()).device
    losses = np.empty((len(multipliers), 2 * len(encoded)))
    hidden_parts, where = [], []
    label = f"sweep {split} ({intervention.form if intervention else 'no intervention'})"
    for number, indices in enumerate(tqdm(plan_batches(encoded, settings), desc=label, disable=not progress,
                                          unit="batch")):
        columns = [j for i in indices for j in (2 * i, 2 * i + 1)]
        done = resume.load(number) if resume is not None else None
        if done is not None:
            losses[:, columns] = done
            continue
        batch = collate_pairs([encoded[i] for i in indices], pad_token_id(tokenizer), device, packed=True, model=model)
        keep = None
        if capture is not None:
            keep_index, batch_where = scored_reads(batch.lengths, indices, capture.tokens_per_answer)
            keep = torch.as_tensor(keep_index, device=device)
            where += batch_where
        result = steered_batch(model, batch, intervention, multipliers, settings,
                               capture.hidden_states if capture else (), keep)
        per_sequence = torch.stack([reduce_nll(row, batch.lengths, loss) for row in result.nll]).cpu().numpy()
        losses[:, columns] = per_sequence
        if capture is not None:
            hidden_parts.append(np.stack([result.hidden[i].numpy() for i in capture.hidden_states], axis=1))
        if resume is not None:
            resume.save(number, per_sequence)
    table = _table(pairs, split, multipliers, losses)
    if capture is None:
        return SweepResult(table)
    return SweepResult(table, np.concatenate(hidden_parts, axis=2), where)


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
def sweep_key(model: nn.Module, pairs: Sequence[PolarityPair], intervention: Intervention | None,
              multipliers: Sequence[float], split: str, loss: str, max_answer_tokens: int | None,
              settings: EngineSettings) -> str:
    """Everything that determines a sweep's table."""
    return artifact_key(SWEEP_CODE, model, pairs, intervention, multipliers=list(multipliers), split=split,
                        loss=loss, max_answer_tokens=max_answer_tokens, settings=resolved(settings, model))


def check_sweep(model: nn.Module, pairs: Sequence[PolarityPair], intervention: Intervention | None,
                multipliers: object, loss: str) -> list[float]:
    """The checks every sweep makes before it computes anything; returns the grid as floats."""
    check_loss(loss)
    if not pairs:
        raise ValueError("sweep needs at least one pair")
    grid = check_multipliers(multipliers, intervention)
    if intervention is not None:
        intervention.check_fits(model)
    return grid


def store_sweep(key: str, table: pd.DataFrame) -> pd.DataFrame:
    """Put a table computed elsewhere (a pass that also captured hidden states) where `run_sweep`
    with the same key finds it."""
    path = cached_artifact(cache_root() / "sweeps" / f"{key}.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    return pd.read_parquet(path)


def run_sweep(
    model: nn.Module,
    tokenizer: object,
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

    With `cache`, the table is stored as parquet under a key of all inputs; a second call returns
    it, an interrupted call resumes from the last finished batch, and concurrent callers wait for
    one another instead of both computing.
    """
    grid = check_sweep(model, pairs, intervention, multipliers, loss)
    settings = settings or EngineSettings()
    options = dict(split=split, loss=loss, max_answer_tokens=max_answer_tokens, settings=settings, progress=progress)
    if not cache:
        return sweep_pass(model, tokenizer, pairs, intervention, grid, **options).table
    key = sweep_key(model, pairs, intervention, grid, split, loss, max_answer_tokens, settings)
    target = cache_root() / "sweeps" / f"{key}.parquet"

    def write(tmp):
        with ResumableBatches(target.with_suffix(".partial")) as resume:
            sweep_pass(model, tokenizer, pairs, intervention, grid, resume=resume, **options).table.to_parquet(
                tmp, index=False)

    return pd.read_parquet(cached_artifact(target, write))


def naive_sweep(
    model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair], intervention: Intervention | None,
    multipliers: Sequence[float], *, split: str = "test", loss: str = "mean", max_answer_tokens: int | None = None,
) -> pd.DataFrame:
    """The reference code's loss mode: one full hooked forward per pair per multiplier, full logits.
    The engine must agree with it; it exists to check and to time the engine."""
    grid = check_sweep(model, pairs, intervention, multipliers, loss)
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device = next(model.parameters()).device
    losses = np.empty((len(grid), 2 * len(encoded)))
    with torch.no_grad():
        for k, m in enumerate(grid):
            for i, pair in enumerate(encoded):
                batch = collate_pairs([pair], pad_token_id(tokenizer), device, packed=False)
                with intervention.apply(model, m) if intervention is not None else _nothing():
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                nll = token_nll(logits[batch.rows, batch.cols], batch.targets)
                losses[k, 2 * i : 2 * i + 2] = reduce_nll(nll, batch.lengths, loss).cpu().numpy()
    return _table(pairs, split, grid, losses)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def precision_noise(model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair],
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

    options = dict(loss=loss, settings=settings, cache=False, progress=False)
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
