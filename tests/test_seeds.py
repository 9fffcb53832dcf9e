"""The training-seed study: chapter 5's conclusions from a summary, and the record that compares seeds."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

import splitlib
from splitlib import evaluation, seeds


def _summary(split_pref: float = 3.0) -> pd.DataFrame:
    """Train and test summaries of SPLIT, SFT and RePS in LoRA and local weight, and DiffMean:
    accuracy grows with m while utility falls past m = 2."""
    rows = []
    updates = [("split", "lora", 0.95, split_pref), ("sft", "lora", 0.85, 1.0), ("reps", "lora", 0.9, 1.0),
               ("split", "local_weight", 0.8, 1.0), ("sft", "local_weight", 0.9, 1.0),
               ("reps", "local_weight", 0.7, 1.0), ("diffmean", "vector", 0.99, 9.0)]
    for method, form, top, slope in updates:
        for split in ("train", "test"):
            for m in (0.0, 1.0, 2.0, 3.0):
                accuracy = 0.5 + (top - 0.5) * min(m, 2.0) / 2
                row = {"method": method, "form": form, "split": split, "m": m, "accuracy": accuracy,
                       "pref_odds": slope * m, "util_odds": -1.0 - (5.0 if m == 3.0 else 0.0)}
                rows.append(row | {f"{c}_{end}": row[c] + (0.1 if end == "high" else -0.1)
                                   for c in evaluation.TABLE_COLUMNS for end in ("low", "high")})
    return pd.DataFrame(rows)


def _chosen(summary: pd.DataFrame) -> dict:
    return evaluation.choose_multipliers(summary, sorted(set(zip(summary.method, summary.form))))


def test_conclusions_count_forms_name_the_best_update_and_the_weights_at_90():
    summary = _summary()
    found = evaluation.conclusions(summary, _chosen(summary))
    assert list(found) == ["SPLIT the most accurate", "SPLIT at matched utility, lora",
                           "SPLIT at matched utility, local weight", "the most accurate update",
                           "LoRA and local weight at 90 % or more"]
    assert found["SPLIT the most accurate"] == "in 1 of 2 forms"  # LoRA: 95 % against 90; local weight: 80 against 90
    assert found["SPLIT at matched utility, lora"] == "leads"  # PrefOdds 6 ± 0.1 against 2 ± 0.1 at m = 2
    assert found["SPLIT at matched utility, local weight"] == "ties"
    assert found["the most accurate update"] == "diffmean · vector"
    assert found["LoRA and local weight at 90 % or more"] == "3 of 6"  # DiffMean is not a trained LoRA or local weight


def test_conclusions_follow_the_summary():
    summary = _summary(split_pref=1.0)
    assert evaluation.conclusions(summary, _chosen(summary))["SPLIT at matched utility, lora"] == "ties"


def _record(tmp_path, rows):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps({"profile": "cpu", "task": "psychopathy", "profile_seed": 42, "seeds": rows}))
    return path


def test_the_record_reads_as_one_row_per_seed_and_names_what_holds_in_every_seed(tmp_path):
    rows = [{"seed": s, "conclusions": {"most accurate in": wins, "best update": "split · lora (90%)"}, "table": []}
            for s, wins in ((42, "3 of 3 forms"), (43, "1 of 3 forms"))]
    table = seeds.read_seed_record(_record(tmp_path, rows))["table"]
    assert table.columns.tolist() == ["conclusion", "seed 42", "seed 43"]
    assert seeds.held_in_every_seed(table) == {"best update": rows[0]["conclusions"]["best update"]}


def test_a_file_that_is_not_a_seed_record_is_named(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"chosen": {}}))
    with pytest.raises(ValueError, match="other.json is not a seed record: it lacks seeds, task, profile_seed"):
        seeds.read_seed_record(path)


def test_the_shipped_record_is_a_seed_record_with_the_profile_seed():
    record = seeds.read_seed_record()
    assert record["profile"] == "cpu" and f"seed {record['profile_seed']}" in record["table"].columns


def test_only_training_sees_the_study_seed(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_load_task(task, profile, model, tokenizer):
        seen["data"] = profile.seed
        return splitlib.TaskData(task, "nowhere", [], [])

    def fake_train_all(model, tokenizer, pairs, profile, task, progress=True):
        seen["training"] = profile.seed
        raise Stop

    monkeypatch.setattr(splitlib.data, "load_task", fake_load_task)
    monkeypatch.setattr(splitlib.train, "train_all", fake_train_all)
    with pytest.raises(Stop):
        seeds.seed_conclusions(None, None, splitlib.get_profile("cpu"), "psychopathy", 7)
    assert seen == {"data": 42, "training": 7}


def test_seeds_must_be_distinct_and_given():
    profile = splitlib.get_profile("cpu")
    with pytest.raises(ValueError, match="seeds"):
        seeds.seed_record(None, None, profile, "psychopathy", [43, 43])
    with pytest.raises(ValueError, match="seeds is empty"):
        seeds.seed_record(None, None, profile, "psychopathy", [])


def test_the_record_is_checked_against_the_page_that_shows_it(tmp_path):
    found = {"most accurate in": "3 of 3 forms", "best update": "split · lora (90%)"}
    record = seeds.read_seed_record(_record(tmp_path, [{"seed": 42, "conclusions": found, "table": []}]))
    cpu = splitlib.get_profile("cpu")
    assert seeds.record_check(record, dict(found), cpu) == "reads as this page's own conclusions do, one for one"
    assert "differs from this page's own conclusions in best update" in seeds.record_check(
        record, found | {"best update": "sft · lora (92%)"}, cpu)
    assert "no run at this page's seed, 7" in seeds.record_check(record, found, dataclasses.replace(cpu, seed=7))
    assert "not compared" in seeds.record_check(record, found, splitlib.get_profile("qwen2.5-7b-it"))


def test_a_training_seed_that_is_not_an_int_is_named_before_anything_loads():
    with pytest.raises(TypeError, match="training_seed must be an int, got str '7'"):
        evaluation.evaluate_task(None, None, splitlib.get_profile("cpu"), "psychopathy", training_seed="7")


def test_rule_verdicts_read_as_conclusions_with_the_book_rule_under_chapter_5s_name():
    verdicts = pd.DataFrame({"rule": list(evaluation.RULES), "forms": [3, 2, 3], "wins": [3, 1, 0]})
    assert evaluation.rule_conclusions(verdicts) == {
        "SPLIT the most accurate": "in 3 of 3 forms",
        f"SPLIT the most accurate, {evaluation.FITTED_RULE}": "in 1 of 2 forms",
        f"SPLIT the most accurate, {evaluation.FIXED_RULE}": "in 0 of 3 forms"}


def test_a_page_is_checked_only_on_the_conclusions_it_computes(tmp_path):
    found = {"SPLIT the most accurate": "in 3 of 3 forms", "SPLIT the most accurate, fitted curves": "in 2 of 3 forms"}
    record = seeds.read_seed_record(_record(tmp_path, [{"seed": 42, "conclusions": found, "table": []}]))
    cpu = splitlib.get_profile("cpu")
    own = {"SPLIT the most accurate": "in 3 of 3 forms"}
    assert seeds.record_check(record, own, cpu) == "reads as this page's own conclusions do, one for one"
    assert "differs from this page's own conclusions in the best update" in seeds.record_check(
        record, own | {"the best update": "split · lora"}, cpu)  # one the record lacks


def test_seeds_are_grouped_by_what_a_conclusion_reads():
    table = pd.DataFrame({"conclusion": ["a", "b"], "seed 42": ["in 3 of 3 forms", "ties"],
                          "seed 43": ["in 2 of 3 forms", "ties"], "seed 44": ["in 3 of 3 forms", "ties"]})
    assert seeds.by_seed(table, ["a", "b"]) == (
        "a: in 3 of 3 forms with seeds 42 and 44, in 2 of 3 forms with seed 43; b: ties with seeds 42, 43 and 44")
    with pytest.raises(KeyError, match="no conclusion 'c'"):
        seeds.by_seed(table, ["c"])


def _ablation_table(pref, util, half_band):
    return pd.DataFrame({"variant": ["as configured", "λ_n = 0", "γ = 0"], "pref_odds": pref,
                         "pref_odds_low": [p - half_band for p in pref],
                         "pref_odds_high": [p + half_band for p in pref], "util_odds": util})


def test_the_ablation_reads_as_the_papers_account_of_the_knobs_or_not():
    clear = evaluation.ablation_conclusions(_ablation_table([3.0, 2.2, 0.2], [-1.5, -9.0, -1.3], 0.6))
    assert clear == {"PrefOdds without the hinge (γ = 0)": "lower",
                     "UtilOdds without the losing answer's term (λ_n = 0)": "lower",
                     "the ablation": "separates the knobs by more than the noise"}
    noisy = evaluation.ablation_conclusions(_ablation_table([3.0, 3.1, 3.2], [-1.5, -1.0, -1.3], 0.6))
    assert noisy == {"PrefOdds without the hinge (γ = 0)": "not lower",
                     "UtilOdds without the losing answer's term (λ_n = 0)": "not lower",
                     "the ablation": "does not separate the knobs' roles beyond the noise"}
    assert evaluation.ablation_spread(_ablation_table([3.0, 2.2, 0.2], [0, 0, 0], 0.6)) == pytest.approx((2.8, 0.6))


def test_the_ablation_trains_at_the_training_seed_and_bootstraps_at_the_profiles(monkeypatch):
    seen = {"trained": [], "swept": []}

    def fake_train(model, tokenizer, pairs, method, form, config, profile, progress=True):
        seen["trained"].append(profile.seed)
        return "update"

    def fake_sweep_at(model, tokenizer, pairs, update, m, profile):
        seen["swept"].append(profile.seed)
        return pd.DataFrame([dict.fromkeys(evaluation.TABLE_COLUMNS + evaluation.INTERVALS, 0.0)])

    monkeypatch.setattr(splitlib.train, "train_for_profile", fake_train)
    monkeypatch.setattr(evaluation, "sweep_at", fake_sweep_at)
    profile = splitlib.get_profile("cpu")
    variants = evaluation.knob_variants(splitlib.config_for(profile, "psychopathy", "split", "lora"))
    table = evaluation.ablation(None, None, [], [], profile, variants, 2.0, training_seed=43)
    assert table.variant.tolist() == ["as configured", "λ_n = 0", "γ = 0"]
    assert seen == {"trained": [43, 43, 43], "swept": [42, 42, 42]}
