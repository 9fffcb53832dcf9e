"""Chapter 3's per-update readings on hand-made measures: distances grow with |m|, utility falls."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from splitlib import geometry, manifold

GRID = (-2.0, -1.0, 0.0, 1.0, 2.0)
PAIRS = ("a", "b", "c", "d")


def _measures(scale: float) -> pd.DataFrame:
    rows = [{"hidden_state": 4, "m": m, "pair_id": pair, "token": token,
             **{name: (1 + scale * abs(m)) * (1 + 0.1 * i) for name in geometry.DISTANCES},
             **{name: m * (1 + 0.1 * i) for name in geometry.PROJECTIONS}}
            for m in GRID for i, pair in enumerate(PAIRS) for token in range(2)]
    return pd.DataFrame(rows)


def _sweeps() -> pd.DataFrame:
    rows = [{"method": method, "form": "vector", "split": split, "m": m, "pair_id": pair,
             "pref_odds": m, "util_odds": -1.0 - m * m - 0.1 * i}
            for method in ("diffmean", "split") for split in ("train", "test") for m in GRID
            for i, pair in enumerate(PAIRS)]
    return pd.DataFrame(rows)


MEASURED = {("diffmean", "vector"): _measures(1.0), ("split", "vector"): _measures(3.0)}


def test_distance_curves_are_ratios_to_the_unsteered_point_beside_the_utility_drop():
    curves = manifold.distance_curves(MEASURED, _sweeps())
    at_zero = curves[curves.m == 0]
    assert np.allclose(at_zero[list(geometry.DISTANCES)], 1.0) and np.allclose(at_zero.util_drop, 0.0)
    split_two = curves[(curves.method == "split") & (curves.m == 2.0)].iloc[0]
    assert split_two.mahalanobis == pytest.approx(7.0) and split_two.util_drop == pytest.approx(-4.0)


def test_distance_against_utility_is_a_perfect_negative_rank_correlation():
    rho = manifold.utility_correlations(MEASURED, _sweeps(), n_boot=50)
    assert set(rho.method) == {"diffmean", "split"}  # distance and utility both depend on |m| alone
    assert np.allclose(rho.rho_util, -1.0)
    assert (rho.util_peak_m == 0).all()


def test_an_update_missing_from_the_sweeps_is_named():
    sweeps = _sweeps()
    with pytest.raises(ValueError, match="no test rows for split · vector"):
        manifold.distance_curves(MEASURED, sweeps[sweeps.method != "split"])
    with pytest.raises(ValueError, match="no measured updates"):
        manifold.utility_correlations({}, sweeps)


def test_the_correlation_grid_has_a_row_per_update_and_a_column_per_distance_and_depth():
    rho = manifold.utility_correlations(MEASURED, _sweeps(), n_boot=20)
    grid = manifold.correlation_grid(rho, {4: "layer 3 output"})
    assert list(grid.index) == ["diffmean · vector", "split · vector"]
    assert len(grid.columns) == len(geometry.DISTANCES) and all(c.endswith("· layer 3 output") for c in grid.columns)
    with pytest.raises(ValueError, match="no label for hidden states"):
        manifold.correlation_grid(rho, {})


def test_correlations_by_task_keep_one_distance_at_one_depth_under_the_papers_task_heads():
    rho = manifold.utility_correlations(MEASURED, _sweeps(), n_boot=20)
    both = manifold.correlations_by_task({"psychopathy": rho, "axbench": rho.assign(rho_util=0.5)}, 4, "mahalanobis")
    assert len(both) == 2 * len(MEASURED) and set(both.measure) == {"mahalanobis"}
    assert both.groupby("task").rho_util.first().to_dict() == {"AXB": 0.5, "PSY": -1.0}


def test_correlations_by_task_name_a_bad_task_measure_or_depth():
    rho = manifold.utility_correlations(MEASURED, _sweeps(), n_boot=20)
    with pytest.raises(ValueError, match="unknown task 'sycophancy'"):
        manifold.correlations_by_task({"sycophancy": rho}, 4, "mahalanobis")
    with pytest.raises(ValueError, match="'proj_probe' is not a distance"):
        manifold.correlations_by_task({"psychopathy": rho}, 4, "proj_probe")
    with pytest.raises(ValueError, match="no correlations at hidden state 9 for axbench"):
        manifold.correlations_by_task({"axbench": rho}, 9, "mahalanobis")
    with pytest.raises(ValueError, match="at least one task"):
        manifold.correlations_by_task({}, 4, "mahalanobis")
