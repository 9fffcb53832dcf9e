"""Chapter 3's readings: each update's distance from the unsteered cloud, set against its utility.

Built on `geometry` (the measures) and `fit` (the decay D_u), one row block per method and form,
so a chapter compares every update with one call instead of a loop over them.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
from torch import nn

from . import fit, geometry
from .data import task_columns
from .evaluation import UpdateKey, task_updates, update_rows
from .profiles import Profile
from .scoring import Tokenizer
from .train import evaluation_grid


def _updates(measured: Mapping[UpdateKey, pd.DataFrame]) -> Iterator[tuple[UpdateKey, pd.DataFrame]]:
    if not measured:
        raise ValueError("no measured updates: pass {(method, form): geometry.steering_measures(...)}")
    yield from measured.items()


def distance_curves(measured: Mapping[UpdateKey, pd.DataFrame], sweeps: pd.DataFrame) -> pd.DataFrame:
    """Per method and form and m: each distance as a ratio to m = 0 and each projection's gain
    (`geometry.relative_curves`), the mean test PrefOdds and UtilOdds at that m, and `util_drop`,
    UtilOdds(m) − UtilOdds(0)."""
    curves = []
    for key, measures in _updates(measured):
        test = update_rows(sweeps, key, "test", "sweep table")
        utility = test.groupby("m", as_index=False)[["pref_odds", "util_odds"]].mean()
        unsteered = utility.util_odds[utility.m == 0]
        if unsteered.empty:
            raise ValueError(f"the test sweep of {' · '.join(key)} has no unsteered point (m = 0)")
        curve = geometry.relative_curves(geometry.per_pair(measures)).merge(utility, on="m")
        curves.append(curve.assign(method=key[0], form=key[1], util_drop=curve.util_odds - unsteered.item()))
    return pd.concat(curves, ignore_index=True)


def utility_correlations(measured: Mapping[UpdateKey, pd.DataFrame], sweeps: pd.DataFrame, *,
                         n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per method and form: Spearman's ρ over the grid of each distance with the mean test UtilOdds
    and with the decay D_u fitted to the train UtilOdds (`geometry.rank_correlations`, with
    bootstrap intervals), and `util_peak_m`, where the mean train UtilOdds is highest."""
    tables = []
    for key, measures in _updates(measured):
        train_curve = update_rows(sweeps, key, "train", "sweep table").groupby("m").util_odds.mean()
        utility_fit = fit.fit_utility(train_curve.index.to_numpy(), train_curve.to_numpy(), seed=seed)
        test = update_rows(sweeps, key, "test", "sweep table")
        rho = geometry.rank_correlations(geometry.per_pair(measures), test,
                                         utility_fit.validity if utility_fit.ok else None, n_boot=n_boot, seed=seed)
        tables.append(rho.assign(method=key[0], form=key[1], util_peak_m=float(f"{train_curve.idxmax():.3g}")))
    return pd.concat(tables, ignore_index=True)


def correlation_grid(correlations: pd.DataFrame, labels: Mapping[int, str], value: str = "rho_util") -> pd.DataFrame:
    """`utility_correlations` as a grid for a heat map: one row per update ("method · form"), one
    column per distance and hidden state (named by `labels`)."""
    missing = sorted(set(correlations.hidden_state) - set(labels))
    if missing:
        raise ValueError(f"no label for hidden states {missing}")
    view = correlations.assign(
        column=correlations.measure.map(geometry.MEASURE_LABELS) + " · " + correlations.hidden_state.map(labels),
        row=correlations.method + " · " + correlations.form)
    grid = view.pivot_table(index="row", columns="column", values=value, sort=False)
    grid.index.name = grid.columns.name = None
    return grid


def task_correlations(model: nn.Module, tokenizer: Tokenizer, profile: Profile, task: str,
                      hidden_states: Sequence[int], capture_options: Mapping[str, Any],
                      reference_options: Mapping[str, Any], n_boot: int = 1000) -> pd.DataFrame:
    """`utility_correlations` for one task, by the steps chapter 3 takes for its own: the unsteered
    cloud of the training split, its references, every update (trained and cached) measured on the
    test split over its evaluation grid, and the sweeps of both splits (cached, shared with
    chapters 4 and 5). Rows carry a `task` column."""
    updates = task_updates(model, tokenizer, profile, task)
    cloud = geometry.capture_activations(model, tokenizer, updates.data.train, None, (0.0,), tuple(hidden_states),
                                         cache=True, **capture_options)
    references = geometry.fit_references(cloud, **reference_options)
    # Measured before the sweeps: the capture pass also stores the test split's sweep, which they reuse.
    measured = {key: geometry.steering_measures(model, tokenizer, updates.data.test, update,
                                                evaluation_grid(profile, *key, update, updates.unit), references,
                                                **capture_options)
                for key, update in updates.trained.items()}
    sweeps = updates.sweeps(model, tokenizer, profile)
    return utility_correlations(measured, sweeps, n_boot=n_boot, seed=profile.seed).assign(task=task)


def correlations_by_task(by_task: Mapping[str, pd.DataFrame], hidden_state: int, measure: str) -> pd.DataFrame:
    """Several tasks' `utility_correlations` at one hidden state and distance, in long form with
    the task's column head of the paper (PSY, PWR, AXB): for `book.interval_table`."""
    if not by_task:
        raise ValueError("correlations_by_task needs at least one task's utility_correlations")
    heads = task_columns(by_task)
    if measure not in geometry.DISTANCES:
        raise ValueError(f"measure {measure!r} is not a distance; choose one of {', '.join(geometry.DISTANCES)}")
    rows = [table[(table.hidden_state == hidden_state) & (table.measure == measure)].assign(task=heads[task])
            for task, table in by_task.items()]
    empty = [task for task, table in zip(by_task, rows) if table.empty]
    if empty:
        raise ValueError(f"no correlations at hidden state {hidden_state} for {', '.join(empty)}")
    return pd.concat(rows, ignore_index=True)
