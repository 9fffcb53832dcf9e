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
