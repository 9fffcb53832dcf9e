"""Your own pairs: JSONL and CSV files, checked like the built-in tasks, errors naming file and line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import splitlib
from splitlib.data import DataError, PolarityPair, TaskData, load_pairs

ROWS = [
    {"id": "q1", "question": "Is the sea deep?", "A_p": "Yes, very deep.", "A_n": "No.", "concept": "ocean"},
    {"id": "q2", "question": "Name a colour.", "A_p": "Blue, like the sea.", "A_n": "Red.", "concept": "ocean"},
    {"id": "q3", "question": "What is 2 + 2?", "A_p": "Four waves.", "A_n": "4.", "concept": "ocean"},
]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def csv_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def fails(path: Path, line: int | None, match: str, **options) -> DataError:
    """load_pairs raises a DataError naming `path` (and `line`) and matching `match`."""
    where = f"{path}:{line}" if line is not None else str(path)
    with pytest.raises(DataError, match=re.escape(where) + ".*" + match) as caught:
        load_pairs(path, **options)
    return caught.value


# ----- good files ----------------------------------------------------------------------------------------
def test_jsonl_pairs_with_ids_and_concepts(tmp_path):
    pairs = load_pairs(jsonl(tmp_path / "mine.jsonl", ROWS))
    assert [p.id for p in pairs] == ["q1", "q2", "q3"]
    assert pairs[1] == PolarityPair("q2", "Name a colour.", "Blue, like the sea.", "Red.",
                                    f"{tmp_path / 'mine.jsonl'}:2", "ocean")
    assert splitlib.load_pairs is load_pairs


def test_missing_ids_are_numbered_by_line_and_columns_can_be_renamed(tmp_path):
    rows = [{"prompt": r["question"], "chosen": r["A_p"], "rejected": r["A_n"]} for r in ROWS]
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    pairs = load_pairs(path, columns={"question": "prompt", "A_p": "chosen", "A_n": "rejected"}, id_prefix="d")
    assert [p.id for p in pairs] == ["d-0001", "d-0003"] and pairs[1].positive == "Blue, like the sea."
    with pytest.raises(ValueError, match="maps \\['answer'\\]"):
        load_pairs(path, columns={"answer": "chosen"})


def test_csv_with_quoted_newlines_a_byte_order_mark_and_tsv(tmp_path):
    path = csv_file(tmp_path / "mine.csv", '\ufeffquestion,A_p,A_n\n"Two\nlines?","Yes, two.",No\nOne?,Yes,No\n')
    pairs = load_pairs(path)
    assert [(p.id, p.question, p.source) for p in pairs] == [
        ("mine-0002", "Two\nlines?", f"{path}:2"), ("mine-0004", "One?", f"{path}:4")]
    tsv = csv_file(tmp_path / "mine.tsv", "id\tquestion\tA_p\tA_n\nx\tQ, with a comma?\tYes\tNo\n")
    assert load_pairs(tsv)[0].question == "Q, with a comma?"
    assert load_pairs(csv_file(tmp_path / "data.txt", "question,A_p,A_n\nQ?,Yes,No\n"), file_format="csv")


def test_a_split_column_or_function_gives_train_and_test(tmp_path):
    rows = [{**row, "part": part} for row, part in zip(ROWS, ["train", "Train ", "test"])]
    task = load_pairs(jsonl(tmp_path / "mine.jsonl", rows), split="part")
    assert isinstance(task, TaskData) and task.task == "mine"
    assert [p.id for p in task.train] == ["q1", "q2"] and [p.id for p in task.test] == ["q3"]
    by_function = load_pairs(tmp_path / "mine.jsonl", split=lambda pair: "test" if pair.id == "q1" else "train")
    assert [p.id for p in by_function.test] == ["q1"]


# ----- bad input: each names the file and line ----------------------------------------------------------
def test_a_missing_column(tmp_path):
    rows = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "A_n"}]
    fails(jsonl(tmp_path / "mine.jsonl", rows), 2, "missing field\\(s\\) A_n")
    fails(csv_file(tmp_path / "mine.csv", "question,A_p\nQ?,Yes\n"), 1, "missing column\\(s\\) A_n")
    fails(csv_file(tmp_path / "short.csv", "question,A_p,A_n\nQ?,Yes,No\nR?,Yes\n"), 3, "2 fields but the header has 3")
    fails(jsonl(tmp_path / "split.jsonl", ROWS), 1, "missing field\\(s\\) part", split="part")


@pytest.mark.parametrize("field", ["question", "A_p", "A_n"])
def test_an_empty_field(tmp_path, field):
    rows = [ROWS[0], ROWS[1], {**ROWS[2], field: "  "}]
    fails(jsonl(tmp_path / "mine.jsonl", rows), 3, f"empty {field}")
    header = "question,A_p,A_n\n"
    cells = {"question": "Q?", "A_p": "Yes", "A_n": "No", field: ""}
    fails(csv_file(tmp_path / "mine.csv", header + "P?,Yes,No\n" + ",".join(cells.values()) + "\n"), 3,
          f"empty {field}")


def test_a_field_that_is_not_text(tmp_path):
    fails(jsonl(tmp_path / "mine.jsonl", [{**ROWS[0], "A_p": 4}]), 1, "A_p must be text, got 4")
    fails(jsonl(tmp_path / "ids.jsonl", [{**ROWS[0], "id": None}]), 1, "id must be text or an integer, got null")


def test_a_p_equal_to_a_n(tmp_path):
    fails(jsonl(tmp_path / "mine.jsonl", [ROWS[0], {**ROWS[1], "A_n": "Blue, like the sea. "}]), 2, "A_p equals A_n")
    fails(csv_file(tmp_path / "mine.csv", "question,A_p,A_n\nQ?,Yes,Yes\n"), 2, "A_p equals A_n")


def test_duplicate_ids(tmp_path):
    path = jsonl(tmp_path / "mine.jsonl", [ROWS[0], ROWS[1], {**ROWS[2], "id": "q1"}])
    error = fails(path, 3, "the id 'q1' is already used at")
    assert f"{path}:1" in str(error)
    fails(csv_file(tmp_path / "mine.csv", "id,question,A_p,A_n\n7,Q?,Yes,No\n7,R?,Yes,No\n"), 3, "already used")


def test_bad_utf8(tmp_path):
    good = json.dumps(ROWS[0]).encode()
    (tmp_path / "mine.jsonl").write_bytes(good + b"\n" + good.replace(b"Yes", b"Y\xffs") + b"\n")
    fails(tmp_path / "mine.jsonl", 2, "not valid UTF-8")
    (tmp_path / "mine.csv").write_bytes(b"question,A_p,A_n\nQ?,Yes,No\nR?,\xc3(,No\n")
    fails(tmp_path / "mine.csv", 3, "not valid UTF-8")


def test_bad_json_and_csv_syntax(tmp_path):
    (tmp_path / "mine.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n", encoding="utf-8")
    fails(tmp_path / "mine.jsonl", 2, "bad JSON")
    fails(csv_file(tmp_path / "mine.csv", 'question,A_p,A_n\nQ?,"Yes,No\n'), 2, "bad CSV")
    fails(csv_file(tmp_path / "empty.csv", ""), None, "the file is empty")
    fails(csv_file(tmp_path / "twice.csv", "question,A_p,A_n,A_p\n"), 1, "names A_p more than once")


def test_leakage_across_splits(tmp_path):
    rows = [{**ROWS[0], "part": "train"}, {**ROWS[1], "part": "train"},
            {**ROWS[2], "id": "q4", "question": " Is the  sea deep?", "part": "test"}]
    path = jsonl(tmp_path / "mine.jsonl", rows)
    error = fails(path, 1, "same question", split="part")
    assert f"{path}:1 (train) and {path}:3 (test)" in str(error)
    fails(path, 1, r"\(train\) and .* \(test\) have the same question",
          split=lambda pair: "test" if pair.id == "q4" else "train")


def test_a_bad_or_one_sided_split(tmp_path):
    path = jsonl(tmp_path / "mine.jsonl", [{**row, "part": "dev"} for row in ROWS])
    fails(path, 1, "the split must be 'train' or 'test', got \"dev\"", split="part")
    fails(path, None, "has no test pairs", split=lambda pair: "train")
    fails(path, 2, "got \"validation\"", split=lambda pair: "validation" if pair.id == "q2" else "train")


def test_an_unknown_suffix_or_a_missing_file(tmp_path):
    fails(csv_file(tmp_path / "mine.txt", "question,A_p,A_n\n"), None, "cannot tell the format")
    with pytest.raises(FileNotFoundError, match="no pairs file"):
        load_pairs(tmp_path / "absent.jsonl")
    fails(csv_file(tmp_path / "header.csv", "question,A_p,A_n\n"), None, "no pairs")
