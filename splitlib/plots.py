"""Figures shared by the chapters: one look for the whole book."""
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
    return fig


def accuracy_curve(summary: pd.DataFrame, x: str = "m", hue: str = "split", xlabel: str = "multiplier m") -> Figure:
    """Share of pairs preferring A_p against m, with bootstrap bands."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, group in summary.groupby(hue, sort=False):
        group = group.sort_values(x)
        line, = ax.plot(group[x], group.accuracy, marker=".", color=SPLIT_COLOURS.get(key), label=str(key))
        ax.fill_between(group[x], group.accuracy_low, group.accuracy_high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
    ax.set(xlabel=xlabel, ylabel="share of pairs with PrefOdds > 0", ylim=(0, 1))
    ax.legend(title=hue)
    fig.tight_layout()
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
    return fig


REGION_COLOURS = {"linear": "#d9f0d3", "transitional": "#fee8c8", "convergence": "#e0e0e0"}


def fitted_regions(panels: list[dict], value: str, ylabel: str, columns: int = 4) -> Figure:
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
            edges = [lo, d["convergence_start_neg"], d["linear_end_neg"], d["linear_end_pos"], d["convergence_start_pos"], hi]
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
    return fig
