"""Chapter 3's readings: each update's distance from the unsteered cloud, set against its utility.

Built on `geometry` (the measures) and `fit` (the decay D_u), one row block per method and form,
so a chapter compares every update with one call instead of a loop over them.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import pandas as pd

from . import fit, geometry
from .evaluation import UpdateKey, update_rows


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
