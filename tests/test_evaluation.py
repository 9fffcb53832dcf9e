"""Chapter 5's evaluation helpers on hand-made summaries: m chosen on train only, Table-3 rows."""
from __future__ import annotations

import pandas as pd
import pytest

from splitlib import evaluation
from splitlib.profiles import TrainConfig


def _summary() -> pd.DataFrame:
    rows = []
    for split, shift in (("train", 0.0), ("test", 5.0)):
        for m, accuracy, util in ((0.0, 0.5, -1.0), (1.0, 0.8, -1.5), (2.0, 0.9, -3.0)):
            # on test, the best accuracy within tolerance would be a different m: train must decide
            test_accuracy = {0.0: 0.5, 1.0: 0.6, 2.0: 0.95}[m]
            row = {"method": "split", "form": "lora", "split": split, "m": m,
                   "accuracy": accuracy if split == "train" else test_accuracy,
                   "pref_odds": m + shift, "util_odds": util if split == "train" else -1.0}
            rows.append(row | {f"{c}_{end}": row[c] for c in evaluation.TABLE_COLUMNS for end in ("low", "high")})
    return pd.DataFrame(rows)


def test_the_multiplier_is_chosen_on_the_training_split():
    assert evaluation.choose_multipliers(_summary(), [("split", "lora")], tolerance=1.0) == {("split", "lora"): 1.0}


def test_the_table_reads_each_update_at_its_chosen_m_after_the_unsteered_model():
    table = evaluation.at_chosen(_summary(), {("split", "lora"): 1.0})
    assert list(table.method) == ["vanilla", "split"]
    assert table.accuracy.tolist() == [0.5, 0.6]
    assert table.pref_odds.tolist() == [5.0, 6.0]


def test_a_multiplier_off_the_grid_or_an_unknown_update_is_named():
    with pytest.raises(ValueError, match="split · lora has no test point at its chosen m = 3"):
        evaluation.at_chosen(_summary(), {("split", "lora"): 3.0})
    with pytest.raises(ValueError, match="no train rows for sft · vector"):
        evaluation.choose_multipliers(_summary(), [("sft", "vector")])
    with pytest.raises(ValueError, match="no chosen multipliers"):
        evaluation.at_chosen(_summary(), {})


def test_each_knob_is_moved_alone():
    base = TrainConfig(epochs=2, batch_size=2, grad_accum=1, lr=0.01, multipliers=(1.0,), gamma=1.0, theta=0.4)
    variants = evaluation.knob_variants(base)
    assert variants["as configured"] == base
    assert variants["γ = 0"].gamma == 0 and variants["γ = 0"].theta == base.theta
    assert variants["θ = 0.1"].theta == pytest.approx(0.1)
    assert len(variants) == 7
