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
