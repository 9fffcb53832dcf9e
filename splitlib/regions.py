"""Chapter 4's analysis: the decay model fitted to every method, form and split, and what it says.

Built on `fit`: one call fits every mean curve, one builds the R² table in the layout of the
paper's Tables 2, 6 and 7, one runs the bootstrap over pairs, one picks a multiplier in each
region and one applies the chapter's rule for choosing m. Every table marks what should not be
read as a plain number: a fit whose curve departs from its data between grid points (`fit`'s
shape warnings) and a region boundary beyond the swept range (an extrapolation).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import fit as fitting
from .data import task_columns
from .fit import Fit

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler
    from torch import nn

    from .interventions import Intervention
    from .profiles import Profile

# the two read-outs: the short name used in fit keys and the column of the sweep tables
CURVES = {"pref": "pref_odds", "util": "util_odds"}
KIND_NAMES = {"pref": "preference", "util": "utility", "tanh": "tanh"}
FLAG_MARK = "†"
FLAG_NOTE = f"{FLAG_MARK} the fitted curve departs from its data between grid points (flagged by splitlib.fit)"
QUANTITY_LABELS = {
    "r2": "R²",
    "linear_end_pos": "linear region ends (m > 0)",
    "breakdown_pos": "breakdown, D = 0.5 (m > 0)",
    "breakdown_neg": "breakdown, D = 0.5 (m < 0)",
    "convergence_start_pos": "convergence begins (m > 0)",
    "linear_end_neg": "linear region ends (m < 0)",
    "convergence_start_neg": "convergence begins (m < 0)",
}

FitKey = tuple[str, str, str, str]  # (method, form, split, kind) with kind "pref", "util" or "tanh"


# ----- fitting every curve --------------------------------------------------------------------------------
def fit_curves(means: pd.DataFrame, seed: int = 0, tanh_split: str = "train") -> dict[FitKey, Fit]:
    """The preference and utility fit of every mean curve, keyed (method, form, split, kind), and
    the 4-parameter tanh baseline on the `tanh_split` preference curve.

    `means` has method, form, split, m, pref_odds and util_odds (one row per point of a mean curve)."""
    fits: dict[FitKey, Fit] = {}
    for (method, form, split), curve in means.groupby(["method", "form", "split"], sort=False):
        curve = curve.sort_values("m")
        fits[(method, form, split, "pref")] = fitting.fit_preference(curve.m, curve.pref_odds, seed=seed)
        fits[(method, form, split, "util")] = fitting.fit_utility(curve.m, curve.util_odds, seed=seed)
        if split == tanh_split:
            fits[(method, form, split, "tanh")] = fitting.fit_tanh(curve.m, curve.pref_odds, seed=seed)
    return fits


def flagged_fits(fits: Mapping[FitKey, Fit]) -> pd.DataFrame:
    """One row per fit that is not fitted or whose curve departs from its data, with the reason."""
    import pandas as pd

    rows = [{"method": method, "form": form, "split": split, "curve": KIND_NAMES[kind],
             "why": fitted.flag or "; ".join(fitted.warnings)}
            for (method, form, split, kind), fitted in fits.items() if not fitted.shape_ok]
    return pd.DataFrame(rows, columns=["method", "form", "split", "curve", "why"])


# ----- R² in the layout of the paper's tables ----------------------------------------------------------------
# each column of the R² table and the fit it reads: (split of the fit, kind)
R2_SOURCES = {
    "pref train": ("train", "pref"), "pref test": ("test", "pref"), "pref train→test": ("train", "pref"),
    "util train": ("train", "util"), "util test": ("test", "util"), "util train→test": ("train", "util"),
    "tanh pref train": ("train", "tanh"),
}


def r2_table(means: pd.DataFrame, fits: Mapping[FitKey, Fit]) -> pd.DataFrame:
    """R² per (method, form): each curve's fit on the train and the test split, and the train fit
    evaluated on the test split (the paper's generalisation table); the tanh baseline last."""
    import pandas as pd

    rows = []
    for (method, form), group in means.groupby(["method", "form"], sort=False):
        test = group[group.split == "test"].sort_values("m")
        row: dict[str, object] = {"form": form, "method": method}
        for column, (split, kind) in R2_SOURCES.items():
            fitted = fits[(method, form, split, kind)]
            if column.endswith("→test"):
                row[column] = fitted.r2_on(test.m, test[CURVES[kind]]) if fitted.ok else float("nan")
            else:
                row[column] = fitted.r2
        rows.append(row)
    return pd.DataFrame(rows)


PAPER_R2_TABLES = {"Table 2: fit on the training split": "train", "Table 6: fit on the test split": "test",
                   "Table 7: training fit read on the test split": "train→test"}


def mean_curves(sweeps: pd.DataFrame) -> pd.DataFrame:
    """One row per point of each mean curve (method, form, split, m) of an `evaluation_sweeps` table."""
    keys = ["method", "form", "split", "m"]
    return sweeps.groupby(keys, sort=False)[list(CURVES.values())].mean().reset_index()


def task_means(model: nn.Module, tokenizer, profile: Profile, task: str) -> pd.DataFrame:
    """`mean_curves` for one task: its updates trained and swept on both splits (cached, the
    sweeps chapters 3 and 5 read too)."""
    from .evaluation import task_updates

    return mean_curves(task_updates(model, tokenizer, profile, task).sweeps(model, tokenizer, profile))


def task_r2(means: pd.DataFrame, seed: int) -> pd.DataFrame:
    """`r2_table` for one task's `task_means`, every mean curve fitted."""
    return r2_table(means, fit_curves(means, seed=seed))


def paper_r2_tables(by_task: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Several tasks' `r2_table` in the layout of the paper's Tables 2, 6 and 7: per table one
    row per form and method, preference then utility, a column per task (PSY, PWR, AXB) and their
    average (not a number where a task's fit is missing)."""
    import pandas as pd

    if not by_task:
        raise ValueError("paper_r2_tables needs at least one task's r2_table")
    heads = task_columns(by_task)
    tables = {}
    for title, source in PAPER_R2_TABLES.items():
        columns: dict[str, pd.Series] = {}
        for kind, label in (("pref", "Pref"), ("util", "Util")):
            for task, table in by_task.items():
                columns[f"{label} {heads[task]}"] = table.set_index(["form", "method"])[f"{kind} {source}"]
            per_task = pd.DataFrame({name: columns[name] for name in columns if name.startswith(label)})
            columns[f"{label} Avg"] = per_task.mean(axis=1, skipna=False)
        tables[title] = pd.DataFrame(columns).reset_index()
    return tables


def r2_view(table: pd.DataFrame, fits: Mapping[FitKey, Fit]) -> Styler:
    """`r2_table` for the page: two decimals, a fit that could not be made as "not fitted", and a
    shape-flagged fit's R² marked † (explained in the caption)."""
    from .book import table as book_table

    shown = table.copy().astype(object)
    for index, row in table.iterrows():
        for column, (split, kind) in R2_SOURCES.items():
            fitted = fits[(row["method"], row["form"], split, kind)]
            shown.at[index, column] = _r2_cell(row[column], fitted)
    return book_table(shown).set_caption(FLAG_NOTE)


def _r2_cell(value: float, fitted: Fit) -> str:
    if not fitted.ok:
        return "not fitted"
    text = "n/a" if not np.isfinite(value) else number(value, 2)
    return text if fitted.shape_ok else f"{text} {FLAG_MARK}"


# ----- bootstrap intervals --------------------------------------------------------------------------------
def interval_table(results: pd.DataFrame, method: str, forms: Iterable[str], n_boot: int = 25, seed: int = 0,
                   split: str = "train",
                   quantities: Sequence[str] = ("r2", "linear_end_pos", "breakdown_pos", "breakdown_neg")
                   ) -> pd.DataFrame:
    """Bootstrap intervals over pairs (`fit.bootstrap`) for `method` in each form: one row per
    form, curve and quantity, with the estimate, its interval, the swept range it should be read
    against and a note when the point fit is flagged. Numbers stay numbers; `interval_view` marks
    them for the page.

    `results` is the per-pair sweep table (method, form, split, pair_id, m, pref_odds, util_odds)."""
    import pandas as pd

    rows = []
    for form in forms:
        per_pair = results[(results.method == method) & (results.form == form) & (results.split == split)]
        for kind, column in CURVES.items():
            point, intervals = fitting.bootstrap(per_pair, column, KIND_NAMES[kind], n_boot=n_boot, seed=seed)
            low_m, high_m = point.grid_range
            note = point.flag or "; ".join(point.warnings)
            for name in quantities:
                value = point.r2 if name == "r2" else point.derived.get(name, float("nan"))
                low, high = intervals.get(name, (float("nan"), float("nan")))
                rows.append({"form": form, "curve": KIND_NAMES[kind], "quantity": name, "estimate": value,
                             "low": low, "high": high, "grid_low": low_m, "grid_high": high_m,
                             "flagged": not point.shape_ok, "note": note})
    return pd.DataFrame(rows)


def interval_view(table: pd.DataFrame) -> Styler:
    """`interval_table` for the page: multipliers outside the swept range written as
    "> 30 (beyond grid)" rather than as the number the fit extrapolated to, and flagged fits
    marked †."""
    import pandas as pd

    from .book import table as book_table

    rows = []
    for row in table.itertuples(index=False):
        shown = [number(v, 2) if row.quantity == "r2" else bounded(v, row.grid_low, row.grid_high)
                 for v in (row.estimate, row.low, row.high)]
        estimate = shown[0] + (f" {FLAG_MARK}" if row.flagged else "")
        ends = [text.replace(" (beyond grid)", "") for text in shown[1:]]
        beyond = " (beyond grid)" if ends != shown[1:] else ""
        interval = f"[{ends[0]}, {ends[1]}]{beyond}" if np.isfinite(row.low) else "—"
        rows.append({"form": row.form, "curve": row.curve, "quantity": QUANTITY_LABELS.get(row.quantity, row.quantity),
                     "estimate": estimate, "95% interval": interval, "note": row.note})
    return book_table(pd.DataFrame(rows)).set_caption(
        f"Multipliers outside the swept range are extrapolations and are shown only as a bound. {FLAG_NOTE}.")


def number(value: float, decimals: int = 2) -> str:
    """One number as the book's tables show it: fixed decimals (fewer for large values, never an
    exponent), a true minus sign, "—" for NaN."""
    if not np.isfinite(value):
        return "—"
    size = abs(value)
    places = decimals if size < 10 else 1 if size < 1000 else 0
    return f"{value:.{places}f}".replace("-", "−")


def bounded(value: float, low: float, high: float) -> str:
    """A multiplier inside [low, high] as a number; outside it, only the bound it lies beyond."""
    if not np.isfinite(value):
        return "—"
    if value > high:
        return f"> {number(high)} (beyond grid)"
    if value < low:
        return f"< {number(low)} (beyond grid)"
    return number(value)


# ----- what each region looks like ------------------------------------------------------------------------
def region_multipliers(fitted: Fit, top: float) -> pd.DataFrame:
    """A multiplier in the middle of each region on the m > 0 side of a preference or utility fit:
    0 (unsteered), the middle of the linear and of the transitional region, and the start of the
    convergence region (at least the grid's largest m `top`, at most twice it). A stop beyond
    `top` or one read from an extrapolated boundary says so in `note`."""
    import pandas as pd

    if not fitted.ok or fitted.kind == "tanh":
        raise ValueError(f"a {fitted.kind} fit{' (' + fitted.flag + ')' if fitted.flag else ''} has no regions")
    linear_end = max(fitted.derived["linear_end_pos"], 0.0)
    convergence = max(fitted.derived["convergence_start_pos"], 0.0)
    stops = {"unsteered": 0.0, "linear": linear_end / 2, "transitional": (linear_end + convergence) / 2,
             "convergence": min(max(convergence, top), 2 * top)}
    reads = {"linear": ["linear_end_pos"], "transitional": ["linear_end_pos", "convergence_start_pos"],
             "convergence": ["convergence_start_pos"]}
    rows = []
    for region, m in stops.items():
        notes = []
        if m > top:
            notes.append(f"beyond the grid (largest m {number(top)})")
        if any(fitted.extrapolated.get(name, False) for name in reads.get(region, [])):
            notes.append("boundary extrapolated")
        if region != "unsteered" and not fitted.shape_ok:
            notes.append("fit flagged")
        rows.append({"region": region, "m": m, "note": "; ".join(notes)})
    return pd.DataFrame(rows)


def region_samples(model: nn.Module, tokenizer, intervention: Intervention, stops: pd.DataFrame,
                   questions: list[str], max_new_tokens: int = 32) -> pd.DataFrame:
    """Greedy answers to `questions` with the update applied at each stop of `region_multipliers`."""
    import pandas as pd

    from .models import generate

    rows = []
    for stop in stops.itertuples(index=False):
        with intervention.apply(model, stop.m):
            answers = generate(model, tokenizer, questions, max_new_tokens)
        rows.append({"region": stop.region, "m": stop.m,
                     **{f"answer {i + 1}": answer or "(nothing)" for i, answer in enumerate(answers)},
                     "note": stop.note})
    return pd.DataFrame(rows)


# ----- the rule for choosing m ----------------------------------------------------------------------------
# ----- figures --------------------------------------------------------------------------------------------
def region_panels(means: pd.DataFrame, fits: Mapping[FitKey, Fit], method: str, split: str = "train") -> list[dict]:
    """The panels of `plots.fitted_regions` for one method: preference in the first row, utility
    in the second, one column per form (each with its own grid of m)."""
    from .plots import FORM_LABELS

    forms = list(dict.fromkeys(means[means.method == method].form))
    panels = []
    for kind, ylabel in (("pref", "PrefOdds"), ("util", "UtilOdds")):
        for form in forms:
            curve = means[(means.method == method) & (means.form == form) & (means.split == split)].sort_values("m")
            panels.append({"title": f"{FORM_LABELS.get(form, form)} · {KIND_NAMES[kind]}", "m": curve.m.to_numpy(),
                           "y": curve[CURVES[kind]].to_numpy(), "fit": fits[(method, form, split, kind)],
                           "tanh": fits.get((method, form, split, "tanh")) if kind == "pref" else None,
                           "ylabel": ylabel})
    return panels


def region_figure(means: pd.DataFrame, fits: Mapping[FitKey, Fit], method: str, split: str = "train") -> Figure:
    """One method's mean curves with their fits and regions (`plots.fitted_regions`): at most 6
    panels, preference above utility for each form."""
    from .plots import fitted_regions

    panels = region_panels(means, fits, method, split)
    return fitted_regions(panels, columns=len(panels) // 2, title=method)
