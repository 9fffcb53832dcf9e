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
    """Left: ‖Δh‖ relative to the residual norm against m, median and 5-95 % band over tokens, per form.
    Right: measured ‖Δh‖ against the formula's, every token and multiplier (a parity plot)."""
    import matplotlib.pyplot as plt
    import numpy as np

    data = measurements.assign(relative=measurements.measured_norm / measurements.residual_norm.median())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for form, group in data.groupby("form", sort=False):
        per_m = group.groupby("m")["relative"]
        colour, label = FORM_COLOURS[form], FORM_LABELS[form]
        left.plot(per_m.median().index, per_m.median().values, marker="o", color=colour, label=label)
        left.fill_between(per_m.median().index, per_m.quantile(0.05).values, per_m.quantile(0.95).values,
                          color=colour, alpha=0.2, linewidth=0)
        right.scatter(group.formula_norm, group.measured_norm, s=6, alpha=0.4, color=colour, label=label)
    left.set(xlabel="multiplier m", ylabel="‖Δh‖ / median ‖h‖ at layer L", title="How far each form moves the activations")
    left.legend(title="form (band: 5-95 % of tokens)")
    top = float(np.nanmax([data.formula_norm.max(), data.measured_norm.max()]))
    right.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--", label="measured = formula")
    right.set(xlabel="‖m(ΔW h + Δb)‖ (Eq. 5)", ylabel="measured ‖Δh‖", title="Measured against the formula")
    right.legend()
    fig.tight_layout()
    return fig
