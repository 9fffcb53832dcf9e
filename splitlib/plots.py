"""Figures shared by the chapters: one look for the whole book.

Each function returns its figure closed: the chapters show it with myst-nb's `glue`, which stores
the image when called, and a figure left open would also be drawn at the end of its cell, so the
page would show it twice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

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
    parity.set(xlabel="‖m(ΔW h + Δb)‖ (Eq. 5)", ylabel="measured ‖Δh‖", title="measured against formula")
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


# `value` is unused but part of the signature the chapters call positionally.
def fitted_regions(panels: list[dict], value: str, ylabel: str, columns: int = 4) -> Figure:  # noqa: ARG001
    """Mean curves (points) with their rational-quadratic fit (line) and the three regions the
    fit implies, shaded: linear (D >= 0.9), transitional, convergence (D <= 0.1).

    Each panel dict has: title, m, y (mean curve), fit (a splitlib.fit.Fit) and optionally tanh.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        m, fitted = np.asarray(panel["m"]), panel["fit"]
        lo, hi = float(m.min()), float(m.max())
        if fitted.ok:
            d = fitted.derived
            edges = [lo, d["convergence_start_neg"], d["linear_end_neg"], d["linear_end_pos"],
                     d["convergence_start_pos"], hi]
            names = ["convergence", "transitional", "linear", "transitional", "convergence"]
            for (left, right), name in zip(zip(edges[:-1], edges[1:]), names):
                left, right = max(lo, min(left, hi)), max(lo, min(right, hi))
                if right > left:
                    ax.axvspan(left, right, color=REGION_COLOURS[name], linewidth=0)
            dense = np.linspace(lo, hi, 400)
            ax.plot(dense, fitted(dense), color="black", linewidth=1.2, label=f"RQ fit, R² {fitted.r2:.2f}")
            if panel.get("tanh") is not None and panel["tanh"].ok:
                ax.plot(dense, panel["tanh"](dense), color="#8172b3", linewidth=1, linestyle="--",
                        label=f"tanh, R² {panel['tanh'].r2:.2f}")
        ax.scatter(m, panel["y"], s=12, color="#c44e52", zorder=3)
        ax.set_title(panel["title"] + ("" if fitted.ok else f"\n(not fitted: {fitted.flag})"), fontsize="small")
        ax.set_xlabel("m", fontsize="small")
        ax.set_ylabel(ylabel, fontsize="small")
        ax.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig


METHOD_COLOURS = {"diffmean": "#4c72b0", "sft": "#8c8c8c", "reps": "#dd8452", "split": "#c44e52"}
FORM_MARKERS = {"vector": "o", "lora": "s", "local_weight": "^"}
MEASURE_COLOURS = {"pca_residual": "#1b9e77", "knn_distance": "#d95f02", "mahalanobis": "#7570b3"}


def manifold_distances(curves: pd.DataFrame, labels: dict[str, str], columns: int = 4) -> Figure:
    """One panel per method and form: each distance from the unsteered cloud, as a ratio to its
    value at m = 0 (log scale, left), and the mean UtilOdds (dashed, right) against m.

    `curves` has method, form, m, util_odds and one column per distance in `labels`."""
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(zip(curves.method, curves.form)))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.7 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, (method, form) in zip(axes.flat, keys):
        panel = curves[(curves.method == method) & (curves.form == form)].sort_values("m")
        for measure, label in labels.items():
            ax.plot(panel.m, panel[measure], marker=".", color=MEASURE_COLOURS[measure], label=label)
        ax.set_yscale("log")
        ax.set_title(f"{method} · {FORM_LABELS[form]}", fontsize="small")
        ax.set_xlabel("m", fontsize="small")
        ax.set_ylabel("distance / distance at m = 0", fontsize="x-small")
        twin = ax.twinx()
        twin.plot(panel.m, panel.util_odds, color="black", linestyle="--", linewidth=1, label="UtilOdds")
        twin.set_ylabel("UtilOdds", fontsize="x-small")
        twin.grid(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    twin_handles, twin_names = twin.get_legend_handles_labels()  # every panel's twin holds the same line
    fig.legend(handles + twin_handles, names + twin_names, loc="lower center",
               ncol=len(labels) + 1, fontsize="small", bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
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


def axis_trajectories(curves: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str) -> Figure:
    """One panel per form, one line per method: `y` against `x` as m runs over its grid (m = 0
    is the hollow marker); the shape of the paper's Figure 3, measured."""
    import matplotlib.pyplot as plt

    forms = list(dict.fromkeys(curves.form))
    fig, axes = plt.subplots(1, len(forms), figsize=(4.4 * len(forms), 3.8), squeeze=False, sharey=True)
    for ax, form in zip(axes[0], forms):
        for method, group in curves[curves.form == form].groupby("method", sort=False):
            group = group.sort_values("m")
            ax.plot(group[x], group[y], marker=FORM_MARKERS[form], markersize=3, color=METHOD_COLOURS[method],
                    label=method)
            zero = group[group.m == 0]
            ax.scatter(zero[x], zero[y], s=60, facecolors="none", edgecolors="black", zorder=3)
        ax.set(title=FORM_LABELS[form], xlabel=xlabel)
        ax.legend(fontsize="x-small")
    axes[0, 0].set_ylabel(ylabel)
    fig.tight_layout()
    plt.close(fig)
    return fig


def utility_against_distance(curves: pd.DataFrame, labels: dict[str, str]) -> Figure:
    """UtilOdds(m) - UtilOdds(0) against each distance ratio, every method and form on one axis:
    if validity depended on the distance alone (Assumption 4.2), the curves would coincide."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(labels), figsize=(4.4 * len(labels), 3.8), squeeze=False, sharey=True)
    for ax, (measure, label) in zip(axes[0], labels.items()):
        for (method, form), group in curves.groupby(["method", "form"], sort=False):
            for number, side in enumerate((group[group.m >= 0], group[group.m <= 0])):  # one line per side
                ax.plot(side[measure], side.util_drop, marker=FORM_MARKERS[form], markersize=3, linewidth=0.8,
                        color=METHOD_COLOURS[method], alpha=0.8,
                        label=None if number else f"{method} · {FORM_LABELS[form]}")
        ax.set_xscale("log")
        ax.set(xlabel=f"{label} / value at m = 0", title=label)
    axes[0, 0].set_ylabel("UtilOdds(m) − UtilOdds(0)")
    axes[0, -1].legend(fontsize="xx-small", ncol=2, loc="lower left")
    fig.tight_layout()
    plt.close(fig)
    return fig
