"""The rational-quadratic decay fits: recovery, the continuity constraint, regions, bad input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from splitlib import fit

GRID = np.linspace(-4, 4, 25)


def _continuous(m_pos, L_pos, p_pos, m_neg, L_neg) -> dict[str, float]:
    """Decay parameters whose two pieces meet at m = 0 (p_neg solved for)."""
    at_zero = (1 + m_pos**2 / L_pos) ** (-p_pos)
    p_neg = math.log(at_zero) / -math.log(1 + m_neg**2 / L_neg)
    return dict(m_pos=m_pos, L_pos=L_pos, p_pos=p_pos, m_neg=m_neg, L_neg=L_neg, p_neg=p_neg)


PREF_TRUE = dict(alpha=1.2, beta=0.3, b=-0.2, **_continuous(0.5, 2.0, 1.5, -0.3, 1.5))
UTIL_TRUE = dict(beta_u=5.0, b_u=-8.0, **_continuous(0.2, 1.0, 1.0, -0.2, 2.0))


def _noisy(curve, params, sd, seed):
    return curve(GRID, *params.values()) + np.random.default_rng(seed).normal(0, sd, GRID.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preference_fit_recovers_the_curve_and_its_regions(seed):
    y = _noisy(fit.preference_curve, PREF_TRUE, 0.02, seed)
    result = fit.fit_preference(GRID, y)
    assert result.ok and result.r2 > 0.99
    dense = np.linspace(-4, 4, 401)
    truth = fit.preference_curve(dense, *PREF_TRUE.values())
    assert np.max(np.abs(result(dense) - truth)) < 0.1
    true_fit = fit.Fit("preference", PREF_TRUE, 1.0, GRID, y)
    expected = fit.derived_quantities(true_fit)
    for name in ("linear_end_pos", "breakdown_pos", "breakdown_neg", "slope_pos"):
        assert result.derived[name] == pytest.approx(expected[name], rel=0.15, abs=0.1), name
    assert result.params["alpha"] == pytest.approx(PREF_TRUE["alpha"], rel=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_utility_fit_recovers_its_parameters(seed):
    y = _noisy(fit.utility_curve, UTIL_TRUE, 0.05, seed)
    result = fit.fit_utility(GRID, y)
    assert result.ok and result.r2 > 0.99
    # heights and centres are identified; a decay's scale L and rate p trade off against each other
    # (a larger p with a larger L gives nearly the same curve), so those are checked through the
    # curve and its region boundaries
    for name in ("beta_u", "b_u", "m_pos", "m_neg"):
        assert result.params[name] == pytest.approx(UTIL_TRUE[name], rel=0.1, abs=0.1), name
    dense = np.linspace(-4, 4, 401)
    assert np.max(np.abs(result(dense) - fit.utility_curve(dense, *UTIL_TRUE.values()))) < 0.15
    expected = fit.derived_quantities(fit.Fit("utility", UTIL_TRUE, 1.0, GRID, y))
    for name in ("breakdown_pos", "breakdown_neg", "linear_end_pos", "convergence_start_neg"):
        assert result.derived[name] == pytest.approx(expected[name], rel=0.15, abs=0.1), name


@pytest.mark.parametrize("kind", ["preference", "utility"])
def test_the_continuity_constraint_holds_at_the_solution(kind):
    curve, truth = (fit.preference_curve, PREF_TRUE) if kind == "preference" else (fit.utility_curve, UTIL_TRUE)
    result = (fit.fit_preference if kind == "preference" else fit.fit_utility)(GRID, _noisy(curve, truth, 0.05, 3))
    p = result.params
    left = (1 + p["m_neg"] ** 2 / p["L_neg"]) ** (-p["p_neg"])
    right = (1 + p["m_pos"] ** 2 / p["L_pos"]) ** (-p["p_pos"])
    assert abs(left - right) < 1e-6 and result.constraint_gap < 1e-6


def test_bounds_keep_utility_height_non_negative_and_centres_in_range():
    y = _noisy(fit.utility_curve, UTIL_TRUE, 0.3, 4)
    result = fit.fit_utility(GRID, y)
    assert result.params["beta_u"] >= 0
    assert -2.0 - 1e-9 <= result.params["m_pos"] <= 4.0 + 1e-9 and -4.0 - 1e-9 <= result.params["m_neg"] <= 2.0 + 1e-9


def test_region_boundaries_match_a_hand_computation():
    # m+ = 0.5, L+ = 2, p+ = 1.5: D = 0.5 where (m - 0.5)^2 = 2 (0.5^(-1/1.5) - 1) = 1.17480...
    params = dict(alpha=1.0, beta=0.0, b=0.0, m_pos=0.5, L_pos=2.0, p_pos=1.5, m_neg=-0.3, L_neg=1.5, p_neg=2.0)
    derived = fit.derived_quantities(fit.Fit("preference", params, 1.0, GRID, GRID))
    assert derived["breakdown_pos"] == pytest.approx(0.5 + math.sqrt(2.0 * (2 ** (2 / 3) - 1)), abs=1e-12)
    assert derived["breakdown_pos"] == pytest.approx(1.58389, abs=1e-5)
    assert derived["linear_end_neg"] == pytest.approx(-0.3 - math.sqrt(1.5 * (0.9 ** (-1 / 2.0) - 1)), abs=1e-12)
    assert derived["convergence_start_pos"] == pytest.approx(0.5 + math.sqrt(2.0 * (0.1 ** (-1 / 1.5) - 1)), abs=1e-12)
    for name, level in (("breakdown_pos", 0.5), ("linear_end_pos", 0.9), ("convergence_start_neg", 0.1)):
        assert fit.decay(np.array([derived[name]]), *list(params.values())[3:])[0] == pytest.approx(level)
    # one-sided slopes at 0 of m * D(m) are D(0+) = (1 + 0.125)^-1.5 and D(0-) = (1 + 0.06)^-2
    assert derived["slope_pos"] == pytest.approx(1.125**-1.5, rel=1e-4)
    assert derived["slope_neg"] == pytest.approx(1.06**-2, rel=1e-4)


def test_tanh_cannot_follow_a_bell():
    y = _noisy(fit.utility_curve, UTIL_TRUE, 0.05, 5)
    assert fit.fit_tanh(GRID, y).r2 < fit.fit_utility(GRID, y).r2 - 0.2
    pref = _noisy(fit.preference_curve, PREF_TRUE, 0.02, 5)
    assert fit.fit_tanh(GRID, pref).ok and fit.fit_tanh(GRID, pref).r2 > 0.5


def test_the_same_data_gives_the_same_fit():
    y = _noisy(fit.preference_curve, PREF_TRUE, 0.05, 6)
    assert fit.fit_preference(GRID, y).params == fit.fit_preference(GRID, y).params


def test_generalisation_r2_can_be_negative():
    train = fit.fit_preference(GRID, _noisy(fit.preference_curve, PREF_TRUE, 0.02, 7))
    other = -fit.preference_curve(GRID, *PREF_TRUE.values())
    assert train.r2_on(GRID, other) < 0


@pytest.mark.parametrize(
    ("m", "y", "flag"),
    [
        (GRID, np.where(GRID > 1, np.nan, GRID), "NaN or infinite"),
        (GRID, np.where(GRID > 1, np.inf, GRID), "NaN or infinite"),
        (GRID[:6], GRID[:6], "cannot determine 9 parameters"),
        (GRID, np.full(GRID.size, 2.5), "flat"),
        (np.abs(GRID), GRID, "both sides of 0"),
    ],
)
def test_bad_input_is_flagged_never_a_silent_number(m, y, flag):
    result = fit.fit_preference(m, y)
    assert not result.ok and flag in result.flag
    assert math.isnan(result.r2) and all(math.isnan(v) for v in result.params.values())


def test_mismatched_shapes_are_an_error():
    with pytest.raises(ValueError, match="one length"):
        fit.fit_utility(GRID, GRID[:-1])


def test_bootstrap_intervals_contain_the_point_estimate():
    rng = np.random.default_rng(8)
    rows = [{"pair_id": f"p{i}", "m": m, "util_odds": value}
            for i in range(12)
            for m, value in zip(GRID, fit.utility_curve(GRID, *UTIL_TRUE.values()) + rng.normal(0, 0.3, GRID.size))]
    point, intervals = fit.bootstrap(pd.DataFrame(rows), "util_odds", "utility", n_boot=30, seed=0)
    assert point.ok and set(intervals) >= {"r2", "breakdown_pos", "linear_end_neg"}
    low, high = intervals["breakdown_pos"]
    assert low <= point.derived["breakdown_pos"] <= high


def test_the_rule_takes_the_largest_preference_within_the_utility_tolerance():
    pref = fit.Fit("preference", dict(alpha=1.0, beta=0.0, b=0.0, m_pos=0.0, L_pos=1e6, p_pos=1.0,
                                      m_neg=0.0, L_neg=1e6, p_neg=1.0), 1.0, GRID, GRID)
    util = fit.Fit("utility", dict(beta_u=4.0, b_u=-6.0, m_pos=0.0, L_pos=1.0, p_pos=1.0,
                                   m_neg=0.0, L_neg=1.0, p_neg=1.0), 1.0, GRID, GRID)
    # preference rises with m, so the rule stops where utility is 1 nat down: 4/(1+m^2) = 3
    assert fit.choose_from_fits(pref, util, tolerance=1.0) == pytest.approx(math.sqrt(1 / 3), abs=5e-3)
    with pytest.raises(ValueError, match="flagged fit"):
        fit.choose_from_fits(fit.fit_preference(GRID, np.full(GRID.size, 1.0)), util)


# ----- does the curve follow its data? ---------------------------------------------------------------------
def test_a_clean_fit_has_no_shape_warnings():
    for curve, truth, fitter in ((fit.preference_curve, PREF_TRUE, fit.fit_preference),
                                 (fit.utility_curve, UTIL_TRUE, fit.fit_utility)):
        result = fitter(GRID, _noisy(curve, truth, 0.02, 9))
        assert result.ok and result.shape_ok and result.warnings == []
        assert fit.shape_warnings(fit.Fit(result.kind, truth, 1.0, GRID, curve(GRID, *truth.values()))) == []


def test_a_spike_between_grid_points_is_flagged():
    # a narrow bell centred half-way between two grid points: the data at the grid barely see it
    coarse = np.linspace(-4, 4, 9)
    params = dict(beta_u=5.0, b_u=0.0, m_pos=0.5, L_pos=0.003, p_pos=1.0, m_neg=-3.0, L_neg=100.0, p_neg=1.0)
    params["p_neg"] = math.log((1 + 0.5**2 / 0.003) ** -1.0) / -math.log(1 + 9 / 100.0)  # continuous at 0
    spiky = fit.Fit("utility", params, 1.0, coarse, fit.utility_curve(coarse, *params.values()))
    warnings = fit.shape_warnings(spiky)
    assert any(w.startswith("spike: between m = 0 and 1") for w in warnings), warnings
    assert spiky.ok  # still fitted: the numbers exist, they are just not supported by the data


def test_a_step_inside_one_interval_is_flagged():
    coarse = np.linspace(-4, 4, 9)
    steep = fit.Fit("tanh", dict(a=1.0, k=200.0, c=-100.0, d=0.0), 1.0, coarse, np.tanh(coarse - 0.5))
    warnings = fit.shape_warnings(steep)
    assert any(w.startswith("step: between m = 0 and 1") for w in warnings), warnings
    assert fit.shape_warnings(steep, tolerance=10.0) == []


def test_boundaries_beyond_the_grid_are_marked_extrapolated():
    # a decay so slow on the positive side that D only reaches 0.1 far beyond m = 4
    params = dict(alpha=1.0, beta=0.0, b=0.0, m_pos=0.0, L_pos=4.0, p_pos=0.5, m_neg=0.0, L_neg=0.5, p_neg=2.0)
    slow = fit.Fit("preference", params, 1.0, GRID, GRID)
    slow.derived = fit.derived_quantities(slow)
    assert slow.derived["convergence_start_pos"] > 4 and slow.extrapolated["convergence_start_pos"]
    assert not slow.extrapolated["linear_end_pos"] and not slow.extrapolated["breakdown_neg"]
    assert "slope_pos" not in slow.extrapolated
    assert slow.grid_range == (-4.0, 4.0) and slow.inside(0.0) and not slow.inside(float("nan"))
