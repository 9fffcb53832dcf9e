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
    assert list(table.method) == ["unsteered", "split"]
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
    assert variants["λ_n = 0"].lambda_n == 0 and variants["λ_n = 0"].gamma == base.gamma
    assert len(variants) == 3


def _reach_summary() -> pd.DataFrame:
    """Test-split summaries of three LoRA updates: SPLIT reaches far more preference within tolerance."""
    rows = []
    for method, slope, width in (("split", 2.0, 0.1), ("sft", 1.0, 0.1), ("reps", 1.0, 3.0)):
        for m in (0.0, 1.0, 2.0, 3.0):
            util = -1.0 - (2.0 if m == 3.0 else 0.0)  # m = 3 costs utility: out of reach
            pref = slope * m
            rows.append({"method": method, "form": "lora", "split": "test", "m": m, "pref_odds": pref,
                         "pref_odds_low": pref - width, "pref_odds_high": pref + width, "util_odds": util})
    return pd.DataFrame(rows)


def test_reach_is_the_best_preference_within_the_utility_tolerance():
    reach = evaluation.frontier_reach(_reach_summary(), tolerance=1.0).set_index("method")
    assert reach.m.tolist() == [2.0, 2.0, 2.0] and reach.pref_odds["split"] == 4.0


def test_split_leads_only_where_the_intervals_separate():
    reach = evaluation.frontier_reach(_reach_summary(), tolerance=1.0)
    verdicts = evaluation.split_verdicts(reach)
    assert verdicts.verdict.tolist() == ["ties"]  # RePS's wide interval reaches SPLIT's
    narrow = reach.assign(pref_odds_high=reach.pref_odds + 0.1, pref_odds_low=reach.pref_odds - 0.1)
    assert evaluation.split_verdicts(narrow).verdict.tolist() == ["leads"]
    assert evaluation.verdict_sentence(evaluation.split_verdicts(narrow)) == "SPLIT leads in lora"


def test_table3_has_a_column_per_task_and_the_judge_scores_where_given():
    summary = _summary()
    chosen = {("split", "lora"): 1.0}
    task = evaluation.TaskEvaluation("powerseeking", None, summary, chosen,
                                     evaluation.at_chosen(summary, chosen))
    table = evaluation.table3({"powerseeking": task})
    assert table["update"].tolist() == ["unsteered", "split · lora"]
    assert table["powerseeking A_p share"].tolist() == [0.5, 0.6]
    task.judged = pd.DataFrame({"update": ["unsteered", "split · lora", "split · lora"],
                                "powerseeking_score": pd.array([1, 3, pd.NA], dtype="Int64")})
    judged = evaluation.table3({"powerseeking": task}).set_index("update")
    assert judged.loc["split · lora", "powerseeking powerseeking_score"] == 3.0
    assert judged.loc["split · lora", "powerseeking powerseeking_score missing"] == 1


def test_task_verdicts_name_each_task():
    summary = _reach_summary()
    task = evaluation.TaskEvaluation("axbench", None, summary, {}, pd.DataFrame())
    assert evaluation.task_verdicts({"axbench": task}) == "on axbench, SPLIT ties in lora"


def test_judge_agreement_ranks_updates_by_score_against_preference():
    table = pd.DataFrame({"method": ["unsteered", "sft", "reps", "split"], "form": ["-", "lora", "lora", "lora"],
                          "pref_odds": [0.0, 1.0, 2.0, 3.0]})
    task = evaluation.TaskEvaluation("axbench", None, pd.DataFrame(), {}, table)
    assert evaluation.judge_agreement(task) is None  # no judge, no agreement
    task.judged = pd.DataFrame({"update": ["unsteered", "sft · lora", "reps · lora", "split · lora"],
                                "concept_score": pd.array([0, 1, 1, 2], dtype="Int64"),
                                "harmonic_mean": [0.0, 1.0, 1.0, 2.0]})
    agreed = evaluation.judge_agreement(task)
    assert agreed.n == 4 and agreed.rho > 0.9


def test_each_rule_reads_the_test_split_at_its_own_m(monkeypatch):
    from types import SimpleNamespace

    from splitlib import fit

    swept = []

    def fake_sweep_at(model, tokenizer, pairs, update, m, profile):
        swept.append(m)
        row = {c: 0.7 for c in evaluation.TABLE_COLUMNS + evaluation.INTERVALS}
        return pd.DataFrame([row | {"accuracy": 0.5}, row])

    monkeypatch.setattr(fit, "choose_from_fits", lambda pref, util, tolerance: 1.5)  # off the grid
    monkeypatch.setattr(evaluation, "sweep_at", fake_sweep_at)
    ok = SimpleNamespace(ok=True)
    fits = {("split", "lora", "train", "pref"): ok, ("split", "lora", "train", "util"): ok}
    table = evaluation.rule_comparison(None, None, [], {("split", "lora"): None}, _summary(), fits, None)
    assert list(table.rule) == list(evaluation.RULES)
    assert table.m.tolist() == [1.0, 1.5, 1.0]
    assert table.accuracy.tolist() == [0.6, 0.7, 0.6], "on the grid from the test summary, off it from a sweep"
    assert swept == [1.5]
    flagged = fits | {("split", "lora", "train", "util"): SimpleNamespace(ok=False)}
    without = evaluation.rule_comparison(None, None, [], {("split", "lora"): None}, _summary(), flagged, None)
    assert without.m.isna().tolist() == [False, True, False] and without.accuracy.isna().tolist()[1]


def test_rule_verdicts_count_the_forms_a_method_leads():
    rows = [("book", "lora", "split", 0.9), ("book", "lora", "sft", 0.8), ("book", "vector", "split", 0.6),
            ("book", "vector", "reps", 0.7), ("book", "vector", "diffmean", 0.99),
            ("m = 1", "lora", "split", 0.5), ("m = 1", "lora", "sft", 0.5)]
    table = pd.DataFrame(rows, columns=["rule", "form", "method", "accuracy"])
    verdicts = evaluation.rule_verdicts(table).set_index("rule")
    assert verdicts.loc["book", "wins"] == 1 and verdicts.loc["book", "forms"] == 2, "DiffMean is not trained"
    assert verdicts.loc["m = 1", "wins"] == 1, "a tie counts as at least as accurate"


def test_method_leads_ignores_the_unsteered_row_and_diffmean():
    table = pd.DataFrame([("-", "unsteered", 0.99), ("lora", "split", 0.9), ("lora", "reps", 0.8),
                          ("vector", "diffmean", 0.99), ("vector", "split", 0.7), ("vector", "sft", 0.75)],
                         columns=["form", "method", "accuracy"])
    assert evaluation.method_leads(table, "split") == (1, 2)
