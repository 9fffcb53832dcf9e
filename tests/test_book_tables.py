"""The chapters' table helpers: narrow enough for the page, nothing lost."""
from __future__ import annotations

import dataclasses
import re

import pandas as pd
import pytest

import splitlib
from splitlib import book
from splitlib.book import hyperparameter_table, interval_table
from splitlib.data import task_columns
from splitlib.train import config_for


def test_an_interval_table_has_one_cell_per_row_and_column_with_its_interval():
    frame = pd.DataFrame({"method": ["a", "a", "b", "b"], "measure": ["x", "y", "x", "y"],
                          "rho": [0.5, -0.25, 0.1, 0.0], "rho_low": [0.4, -0.5, -0.1, -0.2],
                          "rho_high": [0.6, 0.0, 0.3, 0.2]})
    shown = interval_table(frame, "rho", ["method"], "measure", {"x": "distance x"}, "caption").data
    assert list(shown.columns) == ["method", "distance x", "y"]
    assert shown.set_index("method").loc["a", "y"] == "-0.25 [-0.50, +0.00]"
    assert shown.set_index("method").loc["b", "distance x"] == "+0.10 [-0.10, +0.30]"


def test_the_hyperparameter_table_keeps_what_varies_and_names_the_rest_once():
    profile = dataclasses.replace(splitlib.get_profile("cpu"), method_schedules={})  # one schedule per form
    configs = {(method, form): config_for(profile, "psychopathy", method, form)
               for method in ("sft", "split") for form in ("vector", "lora")}
    styled = hyperparameter_table(configs)
    shown = styled.data
    varying = [c for c in shown.columns[2:]]
    assert "lambda_n" in varying and "epochs" not in varying
    assert f"epochs = {configs['sft', 'vector'].epochs}" in styled.caption
    every = set(vars(configs["sft", "vector"]))
    named = set(varying) | {part.split(" = ")[0] for part in styled.caption.split(": ", 1)[1].rstrip(".").split(", ")
                            if " = " in part}
    assert named == every, "every setting is shown, in the table or the caption"


def test_with_intervals_writes_each_value_with_its_bounds_and_drops_them():
    frame = pd.DataFrame({"method": ["split"], "accuracy": [0.9], "accuracy_low": [0.8], "accuracy_high": [0.95]})
    shown = book.with_intervals(frame, {"accuracy": "{:.0%}"})
    assert list(shown.columns) == ["method", "accuracy"]
    assert shown.accuracy.iloc[0] == "90% [80%, 95%]"
    with pytest.raises(ValueError, match="no column 'pref_odds_low'"):
        book.with_intervals(frame.assign(pref_odds=1.0), {"pref_odds": "{:+.2f}"})


def test_answers_table_has_a_row_per_update_and_cuts_long_answers():
    generations = pd.DataFrame({"update": ["unsteered", "unsteered", "split · lora", "split · lora"],
                                "m": [0.0, 0.0, 2.0, 2.0], "index": [0, 1, 0, 1],
                                "generation": ["Yes.", "", "x" * 300, "No,\n  never."]})
    shown = book.answers_table(generations, width=20).data
    assert list(shown.columns) == ["update", "m", "answer 1", "answer 2"]
    assert list(shown["update"]) == ["unsteered", "split · lora"]
    assert shown["answer 2"].tolist() == ["(nothing: the turn ends at once)", "No, never."]
    assert shown["answer 1"].iloc[1] == "x" * 19 + "…"


def test_an_evaluation_sample_shows_one_question_with_scores_and_reasons():
    from splitlib.evaluation import TaskEvaluation

    generations = pd.DataFrame({"update": ["unsteered", "split · lora"] * 2, "m": [0.0, 1.0] * 2,
                                "index": [0, 0, 1, 1], "question": ["Q0", "Q0", "Q1", "Q1"],
                                "generation": ["a", "b", "c", "d"]})
    task = TaskEvaluation("powerseeking", None, pd.DataFrame(), {}, pd.DataFrame(), generations=generations)
    shown = book.evaluation_sample(task, question=1)
    assert shown.data["answer"].tolist() == ["c", "d"] and "Q1" in shown.caption
    task.judged = generations.assign(powerseeking_score=[1, 2, 3, 4], powerseeking_answer=["r"] * 4)
    shown = book.evaluation_sample(task, question=0).data
    assert shown.columns.tolist() == ["update", "m", "answer", "powerseeking_score", "powerseeking reason"]
    with pytest.raises(ValueError, match="no question 5"):
        book.evaluation_sample(task, question=5)


def test_cut_marks_where_text_was_cut_at_either_end():
    assert book.cut("a short line", 40) == "a short line"
    assert book.cut("one two three four", 10) == "one two t…"
    assert book.cut("Is the following statement true? I like tea", 12, keep="end") == "…I like tea"


def _record(method, rows, chosen, task="psychopathy", validation_pairs=32):
    columns = ["form", "lr", "epochs", "batch_size", "m", "accuracy"]
    return {"method": method, "task": task, "validation_pairs": validation_pairs,
            "space": {"schedules": [[2, 8], [4, 4]]}, "chosen": chosen,
            "table": pd.DataFrame(rows, columns=columns)}


def test_the_search_table_has_a_row_per_method_form_and_rate_and_bolds_each_choice():
    split = _record("split", [("lora", 0.1, 2, 8, 1.0, 0.75), ("lora", 0.1, 4, 4, 2.0, 0.875),
                              ("lora", 0.01, 4, 4, 0.5, 0.5)], {"lora": {"lr": 0.1, "epochs": 4, "batch_size": 4}})
    sft = _record("sft", [("lora", 0.03, 2, 8, 1.5, 0.8125)], {"lora": {"lr": 0.03, "epochs": 2, "batch_size": 8}})
    styled = book.search_table([split, sft])
    shown = styled.data
    assert list(shown.columns) == ["method", "form", "lr", "2 × 8", "4 × 4"]
    assert list(zip(shown.method, shown.lr)) == [("split", 0.1), ("split", 0.01), ("sft", 0.03)]
    assert shown.loc[0, "4 × 4"] == "88% (m = 2)" and shown.loc[2, "4 × 4"] == ""
    rule = re.search(r"([^}]*)\{\s*font-weight: bold;", styled.to_html()).group(1)
    assert sorted(re.findall(r"_row(\d+)_col(\d+)", rule)) == [("0", "4"), ("2", "3")]
    assert "32 held-out training pairs (psychopathy)" in styled.caption
    with pytest.raises(ValueError, match="different validation pairs"):
        book.search_table([split, _record("reps", [], {}, validation_pairs=30)])
    with pytest.raises(ValueError, match="at least one search record"):
        book.search_table([])


def test_the_pair_types_table_has_a_column_per_task_read_from_each_config():
    profile = splitlib.get_profile("cpu")
    trained = [("split", "lora"), ("reps", "local_weight")]
    shown = book.pair_types_table(profile, trained).data.set_index(["method", "form"])
    assert list(shown.columns) == ["PSY", "PWR", "AXB"]  # the paper's heads, in the order of TASKS
    for (method, form), row in shown.iterrows():
        for task, head in task_columns(splitlib.TASKS).items():
            assert row[head] == book.PAIR_TYPES_JOIN.join(config_for(profile, task, method, form).pair_types)
    assert shown.loc[("reps", "local_weight"), "AXB"] == "add\u00a0+ sub"  # no break before the "+"


def test_the_run_box_says_the_scale_of_the_profile_it_ran(tmp_path):
    from conftest import tiny_model

    from splitlib.models import describe_model

    info = describe_model(tiny_model("llama"))

    def scale(profile):
        return re.search(r"\*\*Scale:\*\* (.*)", book.run_box(profile, info, "pairs").data).group(1)

    assert scale(splitlib.get_profile("gemma-2-9b-it")) == "the paper's setup"
    assert scale(splitlib.get_profile("cpu")).startswith("a small model at CI sizes")
    small = tmp_path / "small-gemma.toml"
    small.write_text('inherit = "gemma-2-9b-it"\nmodel = "/models/tiny"\n[splits.psychopathy]\ntrain = 24\n')
    assert scale(splitlib.get_profile(str(small))) == "the profile's own split sizes, not the paper's"
