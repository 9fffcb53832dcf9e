"""Chapter 4's analysis on synthetic tables: every fit keyed, the R² and interval tables (with
flagged and extrapolated values marked, never printed as plain numbers), the region stops and
the split figures."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from splitlib import fit, plots, regions

GRID = np.linspace(-4, 4, 17)
PREF = dict(alpha=1.2, beta=0.3, b=-0.2, m_pos=0.5, L_pos=2.0, p_pos=1.5, m_neg=-0.3, L_neg=1.5)
UTIL = dict(beta_u=5.0, b_u=-8.0, m_pos=0.2, L_pos=1.0, p_pos=1.0, m_neg=-0.2, L_neg=2.0)
UPDATES = [("diffmean", "vector"), ("sft", "vector"), ("sft", "lora"), ("sft", "local_weight")]


def _continuous(params: dict) -> dict:
    at_zero = (1 + params["m_pos"] ** 2 / params["L_pos"]) ** (-params["p_pos"])
    return params | {"p_neg": math.log(at_zero) / -math.log(1 + params["m_neg"] ** 2 / params["L_neg"])}


def _per_pair(n_pairs: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pref = fit.preference_curve(GRID, *_continuous(PREF).values())
    util = fit.utility_curve(GRID, *_continuous(UTIL).values())
    rows = [{"method": method, "form": form, "split": split, "pair_id": f"p{i}", "m": m,
             "pref_odds": p + rng.normal(0, 0.1), "util_odds": u + rng.normal(0, 0.2)}
            for method, form in UPDATES for split in ("train", "test") for i in range(n_pairs)
            for m, p, u in zip(GRID, pref, util)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return _per_pair()


@pytest.fixture(scope="module")
def means(results) -> pd.DataFrame:
    keys = ["method", "form", "split", "m"]
    return results.groupby(keys, sort=False)[["pref_odds", "util_odds"]].mean().reset_index()


@pytest.fixture(scope="module")
def fits(means) -> dict:
    return regions.fit_curves(means, seed=0)


def test_every_curve_is_fitted_and_keyed(fits):
    assert len(fits) == len(UPDATES) * (2 * 2 + 1)  # pref and util on both splits, tanh on train
    assert set(fits) >= {("sft", "lora", "test", "util"), ("diffmean", "vector", "train", "tanh")}
    assert all(f.ok and f.shape_ok for f in fits.values())
    assert regions.flagged_fits(fits).empty


def test_the_r2_table_has_one_row_per_update_and_marks_flagged_fits(means, fits):
    table = regions.r2_table(means, fits)
    assert list(zip(table.method, table.form)) == UPDATES
    assert (table["pref train"] > 0.95).all() and (table["util train→test"] > 0.9).all()
    spiky = dict(fits)
    flagged = fit.Fit("utility", fits[("sft", "lora", "train", "util")].params, 0.99, GRID, GRID,
                      warnings=["spike: between m = 0.5 and 1"])
    spiky[("sft", "lora", "train", "util")] = flagged
    shown = regions.r2_view(regions.r2_table(means, spiky), spiky).data
    row = shown[(shown.method == "sft") & (shown.form == "lora")].iloc[0]
    assert row["util train"].endswith(regions.FLAG_MARK) and row["util train→test"].endswith(regions.FLAG_MARK)
    assert not row["pref train"].endswith(regions.FLAG_MARK)
    assert regions.flagged_fits(spiky).why.tolist() == ["spike: between m = 0.5 and 1"]


def test_numbers_are_never_exponents_and_beyond_the_grid_is_a_bound():
    assert regions.number(-1280.4) == "−1280" and regions.number(0.123) == "0.12" and regions.number(-12.34) == "−12.3"
    assert regions.bounded(-1280.0, -95.0, 95.0) == "< −95.0 (beyond grid)"
    assert regions.bounded(120.0, -95.0, 95.0) == "> 95.0 (beyond grid)"
    assert regions.bounded(3.0, -95.0, 95.0) == "3.00" and regions.bounded(float("nan"), -1, 1) == "—"


def test_interval_table_marks_boundaries_beyond_the_grid(results):
    table = regions.interval_table(results, "sft", ["vector"], n_boot=5, seed=0)
    assert set(table.quantity) == {"r2", "linear_end_pos", "breakdown_pos", "breakdown_neg"}
    assert set(table.curve) == {"preference", "utility"} and not table.flagged.any()
    # pretend a boundary was extrapolated far beyond the grid: the page shows a bound, not the number
    far = table.assign(estimate=np.where(table.quantity == "breakdown_neg", -1280.0, table.estimate))
    shown = regions.interval_view(far).data
    cells = shown[shown.quantity.str.startswith("breakdown, D = 0.5 (m < 0)")].estimate
    assert (cells == "< −4.00 (beyond grid)").all()
    assert not shown.estimate.str.contains("e+", regex=False).any()


def test_region_stops_lie_in_their_regions_and_mark_extrapolation(fits):
    fitted = fits[("sft", "vector", "train", "pref")]
    stops = regions.region_multipliers(fitted, top=4.0).set_index("region")
    assert list(stops.index) == ["unsteered", "linear", "transitional", "convergence"]
    d = fitted.derived
    assert 0 < stops.m["linear"] < d["linear_end_pos"] < stops.m["transitional"] < d["convergence_start_pos"]
    slow = fit.Fit("preference", _continuous(PREF | {"L_pos": 50.0}), 1.0, GRID, GRID)
    slow.derived = fit.derived_quantities(slow)
    notes = regions.region_multipliers(slow, top=4.0).set_index("region").note
    assert "boundary extrapolated" in notes["convergence"] and "beyond the grid" in notes["convergence"]
    with pytest.raises(ValueError, match="no regions"):
        regions.region_multipliers(fits[("sft", "vector", "train", "tanh")], top=4.0)


def test_one_region_figure_per_method_with_at_most_six_panels(means, fits):
    for method, forms in (("diffmean", 1), ("sft", 3)):
        figure = regions.region_figure(means, fits, method)
        shown = [ax for ax in figure.axes if ax.get_visible()]
        assert len(shown) == 2 * forms <= plots.MAX_PANELS
        assert figure.legends and not any(ax.get_legend() for ax in shown)  # one legend, outside the data
    assert plt.get_fignums() == []


def test_a_flagged_fit_is_drawn_dashed_grey_and_named_in_the_legend(means, fits):
    spiky = dict(fits)
    original = fits[("sft", "lora", "train", "util")]
    spiky[("sft", "lora", "train", "util")] = fit.Fit("utility", original.params, original.r2, original.m,
                                                      original.y, derived=original.derived, warnings=["spike"])
    figure = regions.region_figure(means, spiky, "sft")
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert plots.FLAGGED_LABEL in labels and "decay fit" in labels
    lines = [line for ax in figure.axes for line in ax.get_lines() if line.get_label() == plots.FLAGGED_LABEL]
    assert len(lines) == 1 and lines[0].get_linestyle() == "--" and lines[0].get_color() == "#7f7f7f"


def test_extrapolated_boundaries_get_a_hollow_marker(means, fits):
    slow = fit.Fit("preference", _continuous(PREF | {"L_pos": 50.0}), 1.0, GRID, GRID)
    slow.derived = fit.derived_quantities(slow)
    figure = plots.fitted_regions([{"title": "slow", "m": GRID, "y": GRID, "fit": slow, "ylabel": "PrefOdds"}])
    markers = [line for line in figure.axes[0].get_lines() if line.get_label() == plots.BEYOND_LABEL]
    assert {line.get_marker() for line in markers} == {">", "<"}  # convergence beyond both ends of the grid
    for line in markers:
        assert line.get_markerfacecolor() == "white"
        assert line.get_xdata()[0] == (4.0 if line.get_marker() == ">" else -4.0)


def test_a_figure_of_more_than_six_panels_is_refused(fits):
    panel = {"title": "x", "m": GRID, "y": GRID, "fit": fits[("sft", "vector", "train", "pref")]}
    with pytest.raises(ValueError, match="split it"):
        plots.fitted_regions([panel] * 7, columns=4)
    assert plt.get_fignums() == []


def _geometry_curves() -> pd.DataFrame:
    rows = []
    for method, form in UPDATES:
        for m in GRID * (25 if method == "diffmean" else 1):
            distance = 1 + abs(m) / 4
            rows.append({"method": method, "form": form, "m": m, "util_odds": -abs(m), "util_drop": -abs(m),
                         "pca_residual": distance, "knn_distance": distance, "mahalanobis": distance,
                         "proj_diffmean": 10 * m if method == "diffmean" else 0.1 * m})
    return pd.DataFrame(rows)


def test_chapter_three_figures_have_at_most_six_panels_and_legends_outside():
    curves = _geometry_curves()
    labels = {"pca_residual": "PCA residual", "mahalanobis": "Mahalanobis"}
    figures = [plots.manifold_distances(curves, labels, "sft"), plots.manifold_distances(curves, labels, "diffmean"),
               plots.utility_against_distance(curves, labels),
               plots.utility_against_distance(curves, {"mahalanobis": "Mahalanobis"}),
               plots.axis_trajectories(curves, "proj_diffmean", "util_drop", "gain", "drop")]
    counts = [len([ax for ax in f.axes if ax.get_visible()]) for f in figures]
    assert counts == [6, 2, 6, 3, 4]
    for figure in figures:
        assert figure.legends and not any(ax.get_legend() for ax in figure.axes)
    # DiffMean has its own panel, so the trained updates' axis is not stretched to its scale
    gain = figures[-1]
    assert gain.axes[0].get_title().startswith("diffmean") and gain.axes[1].get_xlim()[1] < 5
    assert plt.get_fignums() == []


def test_spread_multipliers_takes_the_ends_the_quarters_and_zero():
    assert plots.spread_multipliers([-2, -1, 0, 1, 2, -3, 3, 4, -4]) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def _r2_rows(offset: float) -> pd.DataFrame:
    rows = [{"form": form, "method": method, **{column: offset + k / 10 for k, column in
                                                  enumerate(regions.R2_SOURCES)}} for method, form in UPDATES]
    return pd.DataFrame(rows)


def test_paper_r2_tables_put_each_task_in_its_column_with_the_average():
    psy, axb = _r2_rows(0.0), _r2_rows(0.05)
    axb.loc[1, "util test"] = float("nan")  # a missing fit leaves that row's average missing
    tables = regions.paper_r2_tables({"psychopathy": psy, "axbench": axb})
    assert list(tables) == list(regions.PAPER_R2_TABLES)
    table6 = tables["Table 6: fit on the test split"]
    assert list(table6.columns) == ["form", "method", "Pref PSY", "Pref AXB", "Pref Avg",
                                    "Util PSY", "Util AXB", "Util Avg"]
    assert list(zip(table6.method, table6.form)) == UPDATES
    assert np.allclose(table6["Pref PSY"], psy["pref test"]) and np.allclose(table6["Util AXB"][[0, 2, 3]],
                                                                               axb["util test"][[0, 2, 3]])
    assert np.allclose(table6["Pref Avg"], (psy["pref test"] + axb["pref test"]) / 2)
    assert math.isnan(table6["Util Avg"][1]) and not math.isnan(table6["Util Avg"][0])
    table7 = tables["Table 7: training fit read on the test split"]
    assert np.allclose(table7["Util PSY"], psy["util train→test"])


def test_paper_r2_tables_refuse_no_task_and_unknown_tasks():
    with pytest.raises(ValueError, match="at least one"):
        regions.paper_r2_tables({})
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        regions.paper_r2_tables({"sentiment": _r2_rows(0.0)})


def test_task_r2_is_the_r2_table_of_the_fitted_means(means, fits):
    assert regions.task_r2(means, seed=0).equals(regions.r2_table(means, fits))


def test_a_tasks_curves_draw_one_panel_per_form_and_leave_diffmean_out(means):
    figure = plots.task_curves(means, "a task")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [plots.FORM_LABELS[f] for f in dict.fromkeys(
        means[means.method != "diffmean"].form)]
    assert all(len(ax.get_lines()) == 2 * means[(means.method != "diffmean") & (means.form == f)].method.nunique() + 1
               for ax, f in zip(panels, dict.fromkeys(means[means.method != "diffmean"].form)))
    with pytest.raises(ValueError, match="no trained method's mean curve on the test split"):
        plots.task_curves(means[means.method == "diffmean"], "DiffMean only", split="test")
