"""Chapter 5's evaluation: one m per update chosen on the training split, the updates compared at
it (the layout of the paper's Table 3), and SPLIT's knobs ablated.

Built on `scoring` (summaries and the rule for m), `train` and `sweep`; the chapter calls these
instead of looping over updates itself.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from .scoring import choose_multiplier, summarise

if TYPE_CHECKING:
    from torch import nn

    from .data import PolarityPair
    from .interventions import Intervention
    from .profiles import Profile, TrainConfig
    from .scoring import Tokenizer

UpdateKey = tuple[str, str]  # (method, form)
TABLE_COLUMNS = ("accuracy", "pref_odds", "util_odds")
INTERVALS = tuple(f"{name}_{end}" for name in TABLE_COLUMNS for end in ("low", "high"))


def _update(summary: pd.DataFrame, key: UpdateKey, split: str) -> pd.DataFrame:
    rows = summary[(summary.method == key[0]) & (summary.form == key[1]) & (summary.split == split)]
    if rows.empty:
        raise ValueError(f"the summary has no {split} rows for {' · '.join(key)}")
    return rows


def choose_multipliers(summary: pd.DataFrame, updates: Iterable[UpdateKey], tolerance: float = 1.0
                       ) -> dict[UpdateKey, float]:
    """Each update's m by `scoring.choose_multiplier`, read on its *training*-split summary only."""
    return {key: choose_multiplier(_update(summary, key, "train"), tolerance=tolerance) for key in updates}


def at_chosen(summary: pd.DataFrame, chosen: Mapping[UpdateKey, float], split: str = "test") -> pd.DataFrame:
    """One row per update at its chosen m (and the unsteered model first): accuracy, PrefOdds and
    UtilOdds on `split`, with their bootstrap intervals."""
    if not chosen:
        raise ValueError("no chosen multipliers: pass {(method, form): m}")
    first = _update(summary, next(iter(chosen)), split)
    unsteered = first[first.m == 0]
    if unsteered.empty:
        raise ValueError(f"the {split} summary has no unsteered point (m = 0)")
    rows = [{"form": "-", "method": "vanilla", "m": 0.0, **unsteered.iloc[0][list(TABLE_COLUMNS + INTERVALS)]}]
    for key, m in chosen.items():
        at = _update(summary, key, split)
        at = at[at.m == m]
        if at.empty:
            raise ValueError(f"{' · '.join(key)} has no {split} point at its chosen m = {m:g}")
        rows.append({"form": key[1], "method": key[0], "m": m, **at.iloc[0][list(TABLE_COLUMNS + INTERVALS)]})
    return pd.DataFrame(rows)


def knob_variants(base: TrainConfig) -> dict[str, TrainConfig]:
    """SPLIT's configuration as given and with each knob moved: λ_n off and to 1, the hinge γ off and
    doubled, the margin θ quartered and doubled."""
    moves = (("λ_n", "lambda_n", (0.0, 1.0)), ("γ", "gamma", (0.0, 2 * base.gamma)),
             ("θ", "theta", (base.theta / 4, 2 * base.theta)))
    return {"as configured": base, **{f"{name} = {value:g}": dataclasses.replace(base, **{field: value})
                                      for name, field, values in moves for value in values}}


def ablation(model: nn.Module, tokenizer: Tokenizer, train: Sequence[PolarityPair], test: Sequence[PolarityPair],
             profile: Profile, variants: Mapping[str, TrainConfig], m: float, method: str = "split",
             form: str = "lora") -> pd.DataFrame:
    """Train each variant (cached) and report its test accuracy, PrefOdds and UtilOdds at `m`,
    with intervals: what each knob of the objective is for."""
    from .sweep import run_sweep
    from .train import train_intervention

    rows = []
    for name, config in variants.items():
        update: Intervention = train_intervention(
            model, tokenizer, train, method, form, profile.layer, config, rank=profile.lora_rank,
            seed=profile.seed, max_answer_tokens=profile.max_answer_tokens)
        sweep = run_sweep(model, tokenizer, test, update, [0.0, m], loss="sum", settings=profile.engine)
        at = summarise(sweep, by=("m",), seed=profile.seed).iloc[-1]
        rows.append({"variant": name, **at[list(TABLE_COLUMNS + INTERVALS)]})
    return pd.DataFrame(rows)
