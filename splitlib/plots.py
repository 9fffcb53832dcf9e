"""Figures shared by the chapters: one look for the whole book.

Each function returns its figure closed: the chapters show it with myst-nb's `glue`, which stores
the image when called, and a figure left open would also be drawn at the end of its cell, so the
page would show it twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

FORM_COLOURS = {"vector": "#1b9e77", "lora": "#d95f02", "local_weight": "#7570b3"}
FORM_LABELS = {"vector": "steering vector", "lora": "LoRA", "local_weight": "local weight"}


def set_style() -> None:
    """The book's plotting defaults (seaborn whitegrid, readable sizes)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", rc={"figure.dpi": 110, "savefig.bbox": "tight"})


def delta_h_figure(measurements: pd.DataFrame) -> Figure:
    """One panel per form: ‖Δh‖ relative to the median residual norm against m (median and
    5-95 % band over tokens). Last panel: measured ‖Δh‖ against the formula's, every token and m."""
    import matplotlib.pyplot as plt
    import numpy as np

    data = measurements.assign(relative=measurements.measured_norm / measurements.residual_norm.median())
    forms = list(dict.fromkeys(data.form))
    fig, axes = plt.subplots(1, len(forms) + 1, figsize=(4 * (len(forms) + 1), 3.8))
    for ax, form in zip(axes, forms):
        per_m = data[data.form == form].groupby("m")["relative"]
        colour = FORM_COLOURS[form]
        median = per_m.median()
        ax.fill_between(median.index, per_m.quantile(0.05).values, per_m.quantile(0.95).values,
                        color=colour, alpha=0.25, linewidth=0, label="5-95 % of tokens")
        ax.plot(median.index, median.values, marker="o", color=colour, label="median token")
        ax.set(xlabel="multiplier m", title=FORM_LABELS[form])
        ax.legend(loc="upper center", fontsize="small")
    axes[0].set_ylabel("‖Δh‖ / median ‖h‖ at layer L")
    for ax in axes[1 : len(forms)]:
        ax.sharey(axes[0])
    parity = axes[-1]
    for form in forms:
        group = data[data.form == form]
        parity.scatter(group.formula_norm, group.measured_norm, s=6, alpha=0.4, color=FORM_COLOURS[form],
                       label=FORM_LABELS[form])
    top = float(np.nanmax([data.formula_norm.max(), data.measured_norm.max()]))
    parity.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--", label="measured = formula")
    parity.set(xlabel="‖m(ΔW h + Δb)‖ (paper Eq. 5)", ylabel="measured ‖Δh‖", title="measured against formula")
    parity.legend(fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig


SPLIT_COLOURS = {"train": "#4c72b0", "test": "#dd8452"}


def odds_curves(summary: pd.DataFrame, x: str = "m", hue: str = "split", xlabel: str = "multiplier m",
                title: str = "", colours: dict[str, str] | None = None) -> Figure:
    """PrefOdds and UtilOdds against m, mean over pairs with bootstrap bands, one line per `hue`."""
    import matplotlib.pyplot as plt

    colours = colours or SPLIT_COLOURS
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for key, group in summary.groupby(hue, sort=False):
        group = group.sort_values(x)
        colour = colours.get(key) if isinstance(key, str) else None
        for ax, name in zip(axes, ("pref_odds", "util_odds")):
            line, = ax.plot(group[x], group[name], marker=".", color=colour, label=str(key))
            ax.fill_between(group[x], group[f"{name}_low"], group[f"{name}_high"], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    axes[0].set(xlabel=xlabel, ylabel="PrefOdds = L_n − L_p", title="preference")
    axes[1].set(xlabel=xlabel, ylabel="UtilOdds", title="utility")
    axes[0].axhline(0, color="black", linewidth=0.6)
    axes[0].legend(title=hue)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def pair_distributions(table: pd.DataFrame, by: str = "task") -> Figure:
    """Per-pair PrefOdds and UtilOdds (one point per pair) for each value of `by`."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, name, label in zip(axes, ("pref_odds", "util_odds"), ("PrefOdds", "UtilOdds")):
        sns.stripplot(data=table, x=name, y=by, hue=by, ax=ax, size=3, alpha=0.6, jitter=0.25, legend=False)
        sns.boxplot(data=table, x=name, y=by, ax=ax, fill=False, showfliers=False, color="black", linewidth=0.8)
        ax.set(xlabel=label, ylabel="")
    axes[0].axvline(0, color="black", linewidth=0.6)
    fig.tight_layout()
    plt.close(fig)
    return fig


def accuracy_curve(summary: pd.DataFrame, x: str = "m", hue: str = "split", xlabel: str = "multiplier m") -> Figure:
    """Share of pairs preferring A_p against m, with bootstrap bands."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, group in summary.groupby(hue, sort=False):
        group = group.sort_values(x)
        line, = ax.plot(group[x], group.accuracy, marker=".", color=SPLIT_COLOURS.get(key), label=str(key))
        ax.fill_between(group[x], group.accuracy_low, group.accuracy_high, color=line.get_color(), alpha=0.2,
                        linewidth=0)
    ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
    ax.set(xlabel=xlabel, ylabel="share of pairs with PrefOdds > 0", ylim=(0, 1))
    ax.legend(title=hue)
    fig.tight_layout()
    plt.close(fig)
    return fig


METHOD_COLOURS = {"diffmean": "#8c8c8c", "sft": "#4c72b0", "reps": "#55a868", "split": "#c44e52"}


def frontier(summary: pd.DataFrame, chosen: dict[tuple[str, str], float] | None = None) -> Figure:
    """One panel per form: mean UtilOdds against mean PrefOdds as m grows from 0, one line per
    method; a star marks each method's chosen m."""
    import matplotlib.pyplot as plt

    forms = list(dict.fromkeys(summary.form))
    fig, axes = plt.subplots(1, len(forms), figsize=(4.6 * len(forms), 4), sharey=True)
    axes = [axes] if len(forms) == 1 else list(axes)
    for ax, form in zip(axes, forms):
        for method, group in summary[summary.form == form].groupby("method", sort=False):
            group = group.sort_values("m")
            colour = METHOD_COLOURS.get(method)
            ax.plot(group.pref_odds, group.util_odds, marker=".", color=colour, label=method)
            ax.scatter(group.pref_odds.iloc[:1], group.util_odds.iloc[:1], color=colour, marker="o", s=30)
            if chosen and (method, form) in chosen:
                at = group[group.m == chosen[(method, form)]]
                ax.scatter(at.pref_odds, at.util_odds, color=colour, marker="*", s=160, edgecolor="black", zorder=5)
        ax.set(xlabel="PrefOdds (test mean)", title=FORM_LABELS.get(form, form))
        ax.legend(fontsize="small")
    axes[0].set_ylabel("UtilOdds (test mean)")
    fig.tight_layout()
    plt.close(fig)
    return fig


def task_curves(means: pd.DataFrame, title: str, split: str = "train") -> Figure:
    """A task's mean curves in the manner of the paper's Figures 2, 4 and 5: one panel per form,
    PrefOdds solid and UtilOdds dashed against m, one colour per trained method. DiffMean is left
    out: its multipliers are on another scale (chapter 4 draws it on its own)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = means[(means.split == split) & (means.method != "diffmean")]
    if shown.empty:
        raise ValueError(f"no trained method's mean curve on the {split} split to draw")
    forms = list(dict.fromkeys(shown.form))
    fig, axes = _grid(1, len(forms), 2.9, 2.9, sharey=True)
    for ax, form in zip(axes.flat, forms):
        for method, group in shown[shown.form == form].groupby("method", sort=False):
            group = group.sort_values("m")
            colour = METHOD_COLOURS.get(method)
            ax.plot(group.m, group.pref_odds, color=colour, marker=".", label=method)
            ax.plot(group.m, group.util_odds, color=colour, linestyle="--")
        ax.axhline(0, color="#999999", linewidth=0.8, zorder=0)
        ax.set(title=FORM_LABELS.get(form, form), xlabel="multiplier m")
    axes.flat[0].set_ylabel(f"mean log-odds ({split})")
    kinds = [(Line2D([], [], color="black"), "PrefOdds"), (Line2D([], [], color="black", linestyle="--"), "UtilOdds")]
    _legend_below(fig, list(axes.flat), kinds, columns=5)
    fig.suptitle(title)
    plt.close(fig)
    return fig


RULE_MARKERS = ("o", "D", "x")


def rule_alternatives(comparison: pd.DataFrame) -> Figure:
    """One panel per form: each method's test accuracy (with its interval) at the m each rule
    picks (`evaluation.rule_comparison`), one marker per rule, side by side."""
    import matplotlib.pyplot as plt
    import numpy as np

    forms = list(dict.fromkeys(comparison.form))
    rules = list(dict.fromkeys(comparison.rule))
    fig, axes = _grid(1, len(forms), 3.4, 3.2, sharey=True)
    for ax, form in zip(axes[0], forms):
        part = comparison[comparison.form == form]
        methods = list(dict.fromkeys(part.method))
        for k, (rule, marker) in enumerate(zip(rules, RULE_MARKERS)):
            rows = part[part.rule == rule].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (k - (len(rules) - 1) / 2) * 0.22
            low, high = rows.accuracy - rows.accuracy_low, rows.accuracy_high - rows.accuracy
            ax.errorbar(x, rows.accuracy, yerr=[low, high], fmt=marker, color="black" if k == 0 else f"C{k}",
                        capsize=2, markersize=5, label=rule)
        ax.set_xticks(range(len(methods)), methods)
        ax.set(title=FORM_LABELS.get(form, form), ylim=(0, 1.05))
        ax.axhline(0.5, color="#777777", linestyle="--", linewidth=0.9, zorder=0)
    axes[0][0].set_ylabel("test accuracy")
    _legend_below(fig, list(axes[0]))
    plt.close(fig)
    return fig


def loss_histories(histories: dict[tuple[str, str], list[float]]) -> Figure:
    """Training loss per optimiser step, one panel per form, one line per method."""
    import matplotlib.pyplot as plt

    forms = list(dict.fromkeys(form for _, form in histories))
    fig, axes = plt.subplots(1, len(forms), figsize=(4.6 * len(forms), 3.4))
    axes = [axes] if len(forms) == 1 else list(axes)
    for ax, form in zip(axes, forms):
        for (method, f), history in histories.items():
            if f == form and history:
                ax.plot(range(1, len(history) + 1), history, color=METHOD_COLOURS.get(method), label=method)
        ax.set(xlabel="optimiser step", ylabel="training loss", title=FORM_LABELS.get(form, form))
        ax.legend(fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig


REGION_COLOURS = {"linear": "#d9f0d3", "transitional": "#fee8c8", "convergence": "#e0e0e0"}
MAX_PANELS = 6  # what a reader takes in at the text column's width (about 784 px)
FLAGGED_STYLE = {"color": "#7f7f7f", "linestyle": "--", "linewidth": 1.4}
FLAGGED_LABEL = "decay fit, flagged: departs from its data"
BEYOND_LABEL = "region boundary beyond the grid (extrapolated)"


def _grid(rows: int, columns: int, panel_width: float, panel_height: float, **options: Any) -> Any:
    """A figure of rows × columns panels (at most MAX_PANELS), laid out so that one legend can sit
    outside the data, below the panels."""
    import matplotlib.pyplot as plt

    if rows * columns > MAX_PANELS:
        raise ValueError(f"{rows} × {columns} panels are more than the {MAX_PANELS} a figure should hold: split it")
    return plt.subplots(rows, columns, figsize=(panel_width * columns, panel_height * rows + 0.8), squeeze=False,
                        layout="constrained", **options)


def _legend_below(fig: Figure, axes: list, extra: list | None = None, columns: int = 3) -> None:
    """One legend for the whole figure, below the panels: each labelled artist once, then the
    (handle, label) pairs of `extra`."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    for handle, label in extra or []:
        seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=min(columns, len(seen)),
                   frameon=False)


def _region_edges(fitted: object, lo: float, hi: float) -> tuple[list[float], list[float]]:
    """A fit's region boundaries in order along m (between lo and hi), and those beyond [lo, hi]."""
    derived = fitted.derived  # type: ignore[attr-defined]
    values = [derived[name] for name in ("convergence_start_neg", "linear_end_neg", "linear_end_pos",
                                         "convergence_start_pos")]
    return [lo, *values, hi], [v for v in values if not lo <= v <= hi]


def fitted_regions(panels: list[dict], columns: int = 3, title: str = "") -> Figure:
    """Mean curves (points) with their rational-quadratic fit (line) and the three regions the fit
    implies, shaded: linear (D >= 0.9), transitional, convergence (D <= 0.1). At most 6 panels,
    sharing m within a column.

    Each panel dict has: title, m, y (mean curve), fit (a splitlib.fit.Fit), ylabel and optionally
    tanh. A fit whose curve departs from its data (not `shape_ok`) is drawn dashed grey with its
    regions faint; a boundary beyond the swept range (extrapolated) is a hollow triangle at the
    panel's edge, pointing the way it lies.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    rows = -(-len(panels) // columns)
    fig, axes = _grid(rows, columns, 2.9, 2.5, sharex="col")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        m, fitted = np.asarray(panel["m"], dtype=float), panel["fit"]
        lo, hi = float(m.min()), float(m.max())
        notes = []
        if fitted.ok:
            edges, beyond = _region_edges(fitted, lo, hi)
            names = ["convergence", "transitional", "linear", "transitional", "convergence"]
            for (left, right), name in zip(zip(edges[:-1], edges[1:]), names):
                left, right = max(lo, min(left, hi)), max(lo, min(right, hi))
                if right > left:
                    ax.axvspan(left, right, color=REGION_COLOURS[name], linewidth=0,
                               alpha=1.0 if fitted.shape_ok else 0.4)
            for value in beyond:
                ax.plot([hi if value > hi else lo], [0.92], marker=">" if value > hi else "<", markersize=10,
                        markerfacecolor="white", markeredgecolor="black", linestyle="none", clip_on=False,
                        zorder=4, transform=ax.get_xaxis_transform(), label=BEYOND_LABEL)
            dense = np.linspace(lo, hi, 800)
            style = {"color": "black", "linewidth": 1.5} if fitted.shape_ok else FLAGGED_STYLE
            ax.plot(dense, fitted(dense), **style, label="decay fit" if fitted.shape_ok else FLAGGED_LABEL)
            notes.append(f"R² {fitted.r2:.2f}" + ("" if fitted.shape_ok else ", flagged"))
            tanh = panel.get("tanh")
            if tanh is not None and tanh.ok:
                ax.plot(dense, tanh(dense), color="#8172b3", linewidth=1.3, linestyle=":", label="tanh baseline")
                notes.append(f"tanh {tanh.r2:.2f}")
        else:
            notes.append("not fitted")
        ax.scatter(m, panel["y"], s=14, color="#c44e52", zorder=3, label="mean curve (data)")
        ax.set_title(f"{panel['title']}\n{', '.join(notes)}", fontsize="medium")
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_xlabel("multiplier m")
    regions = [(Patch(color=colour), f"{name} region") for name, colour in REGION_COLOURS.items()]
    _legend_below(fig, list(axes.flat[:len(panels)]), regions, columns=3)
    if title:
        fig.suptitle(title)
    plt.close(fig)
    return fig


FORM_MARKERS = {"vector": "o", "lora": "s", "local_weight": "^"}
MEASURE_COLOURS = {"pca_residual": "#1b9e77", "knn_distance": "#d95f02", "mahalanobis": "#7570b3"}
SIDE_STYLES: dict[str, Any] = {"m ≥ 0": "-", "m ≤ 0": "--"}


def manifold_distances(curves: pd.DataFrame, labels: dict[str, str], method: str) -> Figure:
    """One method, one column per form (at most 3, so at most 6 panels): above, each distance
    from the unsteered cloud as a ratio to its value at m = 0 (log scale); below, the mean
    UtilOdds, both against m.

    `curves` has method, form, m, util_odds and one column per distance in `labels`."""
    import matplotlib.pyplot as plt

    mine = curves[curves.method == method]
    forms = list(dict.fromkeys(mine.form))
    fig, axes = _grid(2, len(forms), 2.9, 2.4, sharex="col", sharey="row")
    for column, form in enumerate(forms):
        panel = mine[mine.form == form].sort_values("m")
        top, bottom = axes[0, column], axes[1, column]
        for measure, label in labels.items():
            top.plot(panel.m, panel[measure], marker=".", color=MEASURE_COLOURS[measure], label=label)
        top.axhline(1.0, color="black", linewidth=0.6)
        top.set_yscale("log")
        top.set_title(f"{method} · {FORM_LABELS[form]}", fontsize="medium")
        bottom.plot(panel.m, panel.util_odds, marker=".", color="black", label="mean UtilOdds (test)")
        bottom.set_xlabel("multiplier m")
    axes[0, 0].set_ylabel("distance / at m = 0")
    axes[1, 0].set_ylabel("UtilOdds")
    _legend_below(fig, list(axes.flat), columns=2)
    plt.close(fig)
    return fig


def utility_against_distance(curves: pd.DataFrame, labels: dict[str, str]) -> Figure:
    """UtilOdds(m) - UtilOdds(0) against each distance ratio in `labels` (one row each, at most
    2), one column per form, one colour per method, solid for m >= 0 and dashed for m <= 0: if
    validity depended on the distance alone (Assumption 4.2), the lines would coincide."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    forms = list(dict.fromkeys(curves.form))
    fig, axes = _grid(len(labels), len(forms), 2.9, 2.6, sharex="row", sharey=True)
    for row, (measure, label) in enumerate(labels.items()):
        for column, form in enumerate(forms):
            ax = axes[row, column]
            for method, group in curves[curves.form == form].groupby("method", sort=False):
                for side, part in (("m ≥ 0", group[group.m >= 0]), ("m ≤ 0", group[group.m <= 0])):
                    part = part.sort_values(measure)
                    ax.plot(part[measure], part.util_drop, marker=FORM_MARKERS[form], markersize=3, linewidth=1.2,
                            linestyle=SIDE_STYLES[side], color=METHOD_COLOURS[method], label=method)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_xscale("log")
            ax.set_title(FORM_LABELS[form], fontsize="medium")
            ax.set_xlabel(f"{label}\n(ratio to m = 0)")
        axes[row, 0].set_ylabel("UtilOdds(m) − UtilOdds(0)")
    sides = [(Line2D([], [], color="black", linestyle=style), side) for side, style in SIDE_STYLES.items()]
    _legend_below(fig, list(axes.flat), sides, columns=6)
    plt.close(fig)
    return fig


def correlation_heatmap(table: pd.DataFrame, value: str, title: str) -> Figure:
    """A rows × columns table of rank correlations in [-1, 1], each cell annotated."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.0 * table.shape[1] + 2.5, 0.42 * table.shape[0] + 1.6))
    sns.heatmap(table, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", cbar_kws={"label": value},
                annot_kws={"fontsize": "x-small"}, ax=ax)
    ax.set(title=title, xlabel="", ylabel="")
    ax.tick_params(axis="x", labelsize="x-small", rotation=30)
    ax.tick_params(axis="y", labelsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig


def pca_picture(panels: list[dict]) -> Figure:
    """Unsteered activations (grey) and steered ones coloured by m in two principal components.

    Each panel dict has: title, cloud (n, 2), steered {m: (k, 2)} and axis labels xlabel, ylabel."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import colors

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        top = max(abs(m) for m in panel["steered"]) or 1.0
        norm = colors.TwoSlopeNorm(vmin=-top, vcenter=0.0, vmax=top)
        for m, points in sorted(panel["steered"].items()):
            scatter = ax.scatter(*np.asarray(points).T, s=9, c=np.full(len(points), m), cmap="coolwarm", norm=norm,
                                 alpha=0.7, rasterized=True)
        ax.scatter(*panel["cloud"].T, s=3, color="black", alpha=0.6, label="unsteered (train)", zorder=3,
                   rasterized=True)
        fig.colorbar(scatter, ax=ax, label="m (steered test activations)")
        ax.set(title=panel["title"], xlabel=panel["xlabel"], ylabel=panel["ylabel"])
        ax.legend(loc="upper left", fontsize="x-small")
    fig.tight_layout()
    plt.close(fig)
    return fig



def spread_multipliers(grid: object) -> list[float]:
    """Five multipliers spread over a grid that has m = 0: both ends, the points a quarter of the
    way in from each end, and 0."""
    import numpy as np

    values = sorted({float(m) for m in np.asarray(grid, dtype=float)})
    quarter = len(values) // 4
    return sorted({values[0], values[quarter], 0.0, values[-quarter - 1], values[-1]})


def pca_panels(cloud: object, steered: dict[tuple[str, str], object], hidden_state: int) -> list[dict]:
    """The panels of `pca_picture`: the unsteered `cloud` (a geometry.Activations) and each
    update's steered activations at every captured m, in the cloud's first two principal
    components at `hidden_state`."""
    from sklearn.decomposition import PCA

    reference = cloud.at(0.0, hidden_state)  # type: ignore[attr-defined]
    plane = PCA(n_components=2).fit(reference)
    share = plane.explained_variance_ratio_
    return [{"title": f"{method} · {FORM_LABELS.get(form, form)}", "cloud": plane.transform(reference),
             "steered": {float(m): plane.transform(activations.at(m, hidden_state))  # type: ignore[attr-defined]
                         for m in activations.multipliers},  # type: ignore[attr-defined]
             "xlabel": f"PC 1 ({share[0]:.0%} of variance)", "ylabel": f"PC 2 ({share[1]:.0%})"}
            for (method, form), activations in steered.items()]


def axis_trajectories(curves: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str,
                      alone: tuple[str, ...] = ("diffmean",)) -> Figure:
    """`y` against `x` as m runs over its grid (m = 0 is the hollow circle), one line per method:
    one panel per form for the trained updates and, since its scale dwarfs theirs, a panel of its
    own for each method in `alone`; the shape of the paper's Figure 3, measured. The trained
    updates' panels share both axes; each `alone` panel has its own, so every curve is visible."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    own = [(f"{method} · {FORM_LABELS[form]}", curves[(curves.method == method) & (curves.form == form)])
           for method in alone for form in dict.fromkeys(curves[curves.method == method].form)]
    rest = curves[~curves.method.isin(alone)]
    groups = own + [(f"trained · {FORM_LABELS[form]}", rest[rest.form == form]) for form in dict.fromkeys(rest.form)]
    columns = 2 if len(groups) in (2, 4) else min(3, len(groups))
    fig, axes = _grid(-(-len(groups) // columns), columns, 3.6, 2.6)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    trained = list(axes.flat[len(own):len(groups)])
    for ax in trained[1:]:
        ax.sharex(trained[0])
        ax.sharey(trained[0])
    for ax, (title, group) in zip(axes.flat, groups):
        for (method, form), line in group.groupby(["method", "form"], sort=False):
            line = line.sort_values("m")
            ax.plot(line[x], line[y], marker=FORM_MARKERS[form], markersize=3, color=METHOD_COLOURS[method],
                    label=method)
            zero = line[line.m == 0]
            ax.scatter(zero[x], zero[y], s=60, facecolors="none", edgecolors="black", zorder=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_title(title, fontsize="medium")
    for ax in axes[-1]:  # on the bottom row: a figure-wide x label would sit under the legend
        ax.set_xlabel(xlabel)
    fig.supylabel(ylabel, fontsize="medium")
    zero = Line2D([], [], marker="o", markersize=8, markerfacecolor="none", markeredgecolor="black", linestyle="none")
    _legend_below(fig, list(axes.flat[:len(groups)]), [(zero, "m = 0")], columns=5)
    plt.close(fig)
    return fig
