"""The training search: it reads the training split only, cuts it by question, and chooses cheaply."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from conftest import tiny_model

from splitlib import search
from splitlib.data import PolarityPair
from splitlib.profiles import PROFILES, SEARCH_RECORD, get_profile, searched_schedules

LAYER = 2
TRAIN = [PolarityPair(f"q{i // 2}-{i % 2}", f"Question {i // 2}: do you like the sea?", "Yes, the waves.", "No.", "t")
         for i in range(12)]


class TrainOnly:
    """A task whose test split cannot be read without failing the test."""

    task, origin, notes = "psychopathy", "test", []

    def __init__(self, train):
        self.train = train

    @property
    def test(self):
        raise AssertionError("the search read the test split")


def test_the_validation_split_cuts_by_question_and_repeats():
    fit, held = search.validation_split(TRAIN, seed=3)
    assert sorted(p.id for p in fit + held) == sorted(p.id for p in TRAIN)
    assert not {p.group for p in fit} & {p.group for p in held}
    assert 3 <= len(held) <= 6
    assert search.validation_split(TRAIN, seed=3) == (fit, held)
    with pytest.raises(ValueError, match="cannot be cut in two"):
        search.validation_split(TRAIN[:2])


def test_ties_go_to_the_cheaper_schedule():
    table = pd.DataFrame([
        {"form": "lora", "lr": 0.1, "epochs": 4, "batch_size": 4, "pref_odds": 3.0, "accuracy": 0.9},
        {"form": "lora", "lr": 0.03, "epochs": 2, "batch_size": 4, "pref_odds": 2.0, "accuracy": 0.875},
        {"form": "lora", "lr": 0.01, "epochs": 2, "batch_size": 8, "pref_odds": 1.0, "accuracy": 0.5},
        {"form": "vector", "lr": 0.1, "epochs": 4, "batch_size": 4, "pref_odds": 1.0, "accuracy": 0.9},
        {"form": "vector", "lr": 0.01, "epochs": 2, "batch_size": 8, "pref_odds": 1.0, "accuracy": 0.6},
        # tied with the best and as cheap, but less accurate: PrefOdds must not outrank accuracy
        {"form": "local_weight", "lr": 0.002, "epochs": 4, "batch_size": 4, "pref_odds": 0.7, "accuracy": 0.875},
        {"form": "local_weight", "lr": 0.06, "epochs": 4, "batch_size": 4, "pref_odds": 3.0, "accuracy": 0.844},
    ])
    chosen = search.choose_candidates(table, validation_pairs=32).set_index("form")
    assert chosen.loc["lora", "lr"] == 0.03, "within one of 32 validation pairs: the 2-epoch schedule"
    assert chosen.loc["vector", "lr"] == 0.1
    assert chosen.loc["local_weight", "lr"] == 0.002, "equally cheap: the more accurate one"
    assert search.choose_candidates(table, validation_pairs=100).set_index("form").loc["lora", "lr"] == 0.1


@pytest.fixture
def tiny_search(tokenizer, cache_dir, monkeypatch):
    """`search.main` on a tiny model and a task whose test split fails when read; returns the profile."""
    from splitlib import data, models, profiles

    profile = dataclasses.replace(get_profile("cpu"), layer=LAYER, weight_grid=(0.0, 1.0, 2.0),
                                  vector_grid=(0.0, 4.0), max_answer_tokens=None)
    monkeypatch.setattr(profiles, "get_profile", lambda name=None: profile)
    monkeypatch.setattr(models, "load_model", lambda profile: (tiny_model("llama", vocab_size=49152), tokenizer))
    monkeypatch.setattr(data, "load_task", lambda task, *args, **kwargs: TrainOnly(TRAIN))
    return profile


def test_the_search_never_reads_the_test_split(tiny_search, tmp_path, monkeypatch):
    profile = tiny_search
    monkeypatch.setattr(search, "CPU_SPACE", search.SearchSpace({"lora": (0.01, 0.1)}, ((1, 4),)))
    out = tmp_path / "record.json"
    assert search.main(["--out", str(out), "--method", "sft"]) == 0
    record = search.read_record(out)
    assert list(record["table"].lr) == [0.01, 0.1]
    assert set(record["chosen"]) == {"lora"}
    assert record["method"] == "sft"
    assert record["validation_pairs"] == len(search.validation_split(TRAIN, seed=profile.seed)[1])


def test_extending_a_search_runs_only_its_new_candidates(tiny_search, tmp_path, monkeypatch):
    out = tmp_path / "record.json"
    monkeypatch.setattr(search, "CPU_SPACE", search.SearchSpace({"lora": (0.01,)}, ((1, 4),)))
    search.main(["--out", str(out), "--method", "sft"])
    first = search.read_record(out)
    trained = []
    train = search.train_for_profile
    monkeypatch.setattr(search, "train_for_profile",
                        lambda *args, **kwargs: trained.append(args[5].lr) or train(*args, **kwargs))
    monkeypatch.setattr(search, "CPU_SPACE", search.SearchSpace({"lora": (0.01, 0.1)}, ((1, 4),)))
    search.main(["--out", str(out), "--method", "sft", "--extend"])
    extended = search.read_record(out)
    assert trained == [0.1], "the 0.01 candidate comes from the record, not from a new run"
    assert extended["candidates"][0] == first["candidates"][0]
    assert list(extended["table"].lr) == [0.01, 0.1]
    assert extended["seconds"] >= first["seconds"] and extended["extends"] == first["code"]
    with pytest.raises(ValueError, match=r"comes from another search: method 'sft' \(this search: 'reps'\)"):
        search.main(["--out", str(out), "--method", "reps", "--extend"])
    with pytest.raises(ValueError, match="there is no record at .*missing.json to extend"):
        search.main(["--out", str(tmp_path / "missing.json"), "--method", "sft", "--extend"])
    monkeypatch.setattr(search, "CPU_SPACE", search.SearchSpace({"lora": (0.01,), "vector": (0.1,)}, ((1, 4),)))
    with pytest.raises(SystemExit):  # argparse's error: the record's lora rows would be lost
        search.main(["--out", str(out), "--method", "sft", "--forms", "vector", "--extend"])


def test_choices_on_a_grid_edge_are_counted():
    space = {"learning_rates": {"lora": [0.01, 0.1, 0.3], "vector": [0.01, 0.03]}}
    records = [{"space": space, "chosen": {"lora": {"lr": 0.1}, "vector": {"lr": 0.03}}},
               {"space": space, "chosen": {"lora": {"lr": 0.3}}}]
    assert search.choices_inside(records) == (1, 3), "only lora's 0.1 has a rate on both sides"


def test_the_cpu_profile_trains_with_the_shipped_record():
    record = json.loads(SEARCH_RECORD.read_text())
    assert searched_schedules() == record["chosen"]
    for (_task, form), config in PROFILES["cpu"].split_configs.items():
        chosen = record["chosen"][form]
        assert (config.lr, config.epochs, config.batch_size) == (chosen["lr"], chosen["epochs"], chosen["batch_size"])
    table = search.read_record()["table"]
    again = search.choose_candidates(table, record["validation_pairs"]).set_index("form")
    for form, chosen in record["chosen"].items():
        assert (again.loc[form, "lr"], again.loc[form, "epochs"]) == (chosen["lr"], chosen["epochs"])


def test_sft_and_reps_train_with_their_own_records_where_they_ship():
    from splitlib.profiles import SEARCHED_METHODS, method_schedules, search_record_path
    from splitlib.train import config_for

    cpu = PROFILES["cpu"]
    assert cpu.method_schedules == method_schedules()
    for method in SEARCHED_METHODS[1:]:
        path = search_record_path(method)
        chosen = json.loads(path.read_text())["chosen"] if path.exists() else {}
        for form, split_config in ((form, cpu.split_configs[("psychopathy", form)])
                                   for form in ("vector", "lora", "local_weight")):
            config = config_for(cpu, "psychopathy", method, form)
            expected = chosen.get(form, {"lr": split_config.lr, "epochs": split_config.epochs,
                                         "batch_size": split_config.batch_size})
            assert (config.lr, config.epochs, config.batch_size) == (expected["lr"], expected["epochs"],
                                                                     expected["batch_size"])


def test_a_method_schedule_replaces_splits_for_that_method_only(tmp_path):
    from splitlib.profiles import ProfileError, Schedule, profile_from_file
    from splitlib.train import config_for

    cpu = PROFILES["cpu"]
    profile = dataclasses.replace(cpu, method_schedules={("reps", "lora"): Schedule(0.5, 3, 2)})
    reps = config_for(profile, "axbench", "reps", "lora")
    assert (reps.lr, reps.epochs, reps.batch_size, reps.grad_accum, reps.pair_types) == (0.5, 3, 2, 1, ("add", "sub"))
    assert config_for(profile, "axbench", "split", "lora") == cpu.split_configs[("axbench", "lora")]
    file = tmp_path / "mine.toml"
    file.write_text("[method_schedules.split.lora]\nlr = 0.1\nepochs = 2\nbatch_size = 4\n")
    with pytest.raises(ProfileError, match="unknown Profile.method_schedules method 'split'"):
        profile_from_file(file)
    file.write_text("[method_schedules.reps.vector]\nlr = 0.1\nepochs = 2\n")  # no inherited one to merge into
    with pytest.raises(ProfileError, match="method_schedules.reps.vector.*batch_size"):
        profile_from_file(file)
    only_vectors = {key: config for key, config in cpu.split_configs.items() if key[1] == "vector"}
    with pytest.raises(ValueError, match=r"schedule for '\w+' in form 'lora', but Profile.split_configs has no "
                                         r"config in that form \(its forms: vector\)"):
        dataclasses.replace(cpu, split_configs=only_vectors)


def test_a_bad_space_is_named():
    with pytest.raises(ValueError, match="learning_rates\\['lora'\\] is empty"):
        search.SearchSpace({"lora": ()}, ((2, 4),))
    with pytest.raises(ValueError, match="no learning rates for the vector form"):
        search.candidates(PROFILES["cpu"].split_configs[("psychopathy", "vector")], "vector",
                          search.SearchSpace({"lora": (0.1,)}, ((2, 4),)))
    with pytest.raises(ValueError, match="no learning rates for vector"):
        search.CPU_SPACE.restricted(["lora"]).restricted(["vector"])
    assert search.CPU_SPACE.restricted(["lora"]).learning_rates == {"lora": search.CPU_SPACE.learning_rates["lora"]}


def test_the_threads_note_reads_the_records():
    assert search.threads_note([{"threads": 1}, {"threads": 1}]) == "1 thread each"
    assert search.threads_note([{"threads": 2}]) == "2 threads each"
    assert search.threads_note([{"threads": 1}, {"threads": 2}]) == "threads the records do not all give"
    assert search.threads_note([{"threads": 1}, {}]) == "threads the records do not all give"
