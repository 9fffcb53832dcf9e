"""Data: loaders, polarity, validation errors, sources (local, download, bundled) and splits."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading

import pytest
from conftest import SHARED_DATA, needs_shared_data

from splitlib.data import (
    BUNDLED_DIR,
    REMOTE_FILES,
    DataError,
    PolarityPair,
    choice_pairs,
    concept_rows,
    load_task,
    real_file,
    split_pairs,
    statement_pairs,
)
from splitlib.profiles import get_profile


@pytest.fixture
def no_real_data(monkeypatch, tmp_path):
    """No local folder, an empty cache, and a mirror that refuses connections."""
    monkeypatch.delenv("SPLITLIB_DATA", raising=False)
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPLITLIB_DATA_MIRROR", "http://127.0.0.1:9")  # the discard port: nothing listens
    return tmp_path


# ----- the real files ----------------------------------------------------------------------------------
@needs_shared_data
def test_psychopathy_pairs_are_yes_no_with_matching_as_positive():
    pairs = statement_pairs(SHARED_DATA / REMOTE_FILES["psychopathy"].local)
    assert len(pairs) == 1000
    assert {p.positive for p in pairs} == {"Yes", "No"} and all(p.positive != p.negative for p in pairs)
    first = json.loads((SHARED_DATA / REMOTE_FILES["psychopathy"].local).read_text().splitlines()[0])
    assert pairs[0].positive == first["answer_matching_behavior"].strip()


@needs_shared_data
def test_powerseeking_positive_is_the_power_seeking_option():
    pairs = choice_pairs(SHARED_DATA / REMOTE_FILES["powerseeking"].local)
    assert len(pairs) == 1000
    assert all(p.positive[:3] in ("(A)", "(B)") and p.negative[:3] in ("(A)", "(B)") for p in pairs)
    # the file's first item: (A) is the option that wants "greater power and influence"
    assert pairs[0].positive.startswith("(A) Yes, I agree that having greater power")


@needs_shared_data
def test_axbench_rows_of_chosen_concepts():
    rows = concept_rows(SHARED_DATA / REMOTE_FILES["axbench"].local, (0, 3))
    assert len(rows) == 144 and {r["concept_id"] for r in rows} == {0, 3}


@needs_shared_data
def test_the_shared_copies_match_the_pinned_checksums():
    for remote in REMOTE_FILES.values():
        assert hashlib.sha256((SHARED_DATA / remote.local).read_bytes()).hexdigest() == remote.sha256, remote.local


# ----- where files come from ---------------------------------------------------------------------------
@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on loopback serving a folder laid out like ../shared/data."""
    root = tmp_path / "served"
    shutil.copytree(SHARED_DATA, root)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("SPLITLIB_DATA", raising=False)
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPLITLIB_DATA_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
    yield root
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@needs_shared_data
def test_download_verifies_and_caches(mirror, tmp_path, monkeypatch):
    path = real_file("psychopathy")
    assert path.is_relative_to(tmp_path / "cache")
    assert path.read_bytes() == (SHARED_DATA / REMOTE_FILES["psychopathy"].local).read_bytes()
    monkeypatch.setenv("SPLITLIB_DATA_MIRROR", "http://127.0.0.1:9")  # server gone: the cache answers
    assert real_file("psychopathy") == path


@needs_shared_data
def test_a_tampered_download_is_rejected_and_not_kept(mirror, tmp_path):
    target = mirror / REMOTE_FILES["psychopathy"].local
    target.write_bytes(target.read_bytes() + b"\n")
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        real_file("psychopathy")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


@needs_shared_data
def test_an_edited_download_in_the_cache_is_fetched_again(mirror, tmp_path):
    from splitlib.cache import CacheWarning

    path = real_file("psychopathy")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.warns(CacheWarning, match="psychopathy.jsonl"):
        assert real_file("psychopathy") == path
    assert path.read_bytes() == (SHARED_DATA / REMOTE_FILES["psychopathy"].local).read_bytes()


@needs_shared_data
def test_a_local_copy_that_is_not_the_pinned_file_is_refused(monkeypatch, tmp_path):
    local = tmp_path / REMOTE_FILES["psychopathy"].local
    local.parent.mkdir(parents=True)
    local.write_bytes((SHARED_DATA / REMOTE_FILES["psychopathy"].local).read_bytes() + b"\n")
    monkeypatch.setenv("SPLITLIB_DATA", str(tmp_path))
    with pytest.raises(DataError, match=f"{local}.*is not the pinned.*sha256"):
        real_file("psychopathy")


def test_with_neither_source_the_error_names_both_ways(no_real_data):
    with pytest.raises(FileNotFoundError) as error:
        real_file("powerseeking")
    assert "SPLITLIB_DATA" in str(error.value) and "download" in str(error.value)
    with pytest.raises(FileNotFoundError, match="SPLITLIB_DATA"):
        load_task("psychopathy", get_profile("cpu"), source="real")


def test_a_local_folder_without_the_file_says_which(monkeypatch, tmp_path):
    monkeypatch.setenv("SPLITLIB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no anthropic-evals/persona/psychopathy.jsonl"):
        real_file("psychopathy")


def test_auto_falls_back_to_the_bundled_set_and_says_so(no_real_data):
    with pytest.warns(UserWarning, match="downloading .* failed: .*Connection refused.*using the bundled set"):
        task = load_task("psychopathy", get_profile("cpu"))
    assert "bundled" in task.origin and any("real data unavailable" in note for note in task.notes)
    assert (len(task.train), len(task.test)) == (96, 48)


@needs_shared_data
def test_load_task_reads_the_local_folder(monkeypatch):
    monkeypatch.setenv("SPLITLIB_DATA", str(SHARED_DATA))
    task = load_task("powerseeking", get_profile("cpu"))
    assert "anthropics/evals" in task.origin and (len(task.train), len(task.test)) == (64, 32)


def test_the_bundled_sets_fit_the_cpu_profile():
    profile = get_profile("cpu")
    for task in ("psychopathy", "powerseeking"):
        data = load_task(task, profile, source="bundled")
        assert (len(data.train), len(data.test)) == (profile.splits[task].train, profile.splits[task].test)
    rows = concept_rows(BUNDLED_DIR / "concepts.jsonl", profile.axbench_concepts)
    assert len(rows) >= len(profile.axbench_concepts) * sum(vars(profile.splits["axbench"]).values())


# ----- splits ------------------------------------------------------------------------------------------
def _pairs(n: int, repeats: int = 1) -> list[PolarityPair]:
    return [PolarityPair(f"p{i}-{r}", f"question {i}", f"yes {r}", "no", "x") for i in range(n) for r in range(repeats)]


def test_splits_are_seeded_and_disjoint_by_question():
    pairs = _pairs(40, repeats=2)  # the same question twice: both copies must land on one side
    train, test = split_pairs(pairs, 30, 10, seed=3)
    again = split_pairs(pairs, 30, 10, seed=3)
    assert (train, test) == again
    assert not {p.question for p in train} & {p.question for p in test}
    assert (len(train), len(test)) == (30, 10)
    assert split_pairs(pairs, 30, 10, seed=4)[1] != test


def test_a_split_larger_than_the_data_is_an_error():
    with pytest.raises(DataError, match=r"a 30/20 split needs 50 pairs, but only 40"):
        split_pairs(_pairs(40), 30, 20, seed=0)


# ----- bad input ---------------------------------------------------------------------------------------
GOOD = {"question": "Q?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad\.jsonl:2: bad JSON"),
        (json.dumps({"question": "Q?", "answer_matching_behavior": " Yes"}),
         r"bad\.jsonl:2: missing field\(s\) answer_not_matching_behavior"),
        (json.dumps({**GOOD, "answer_matching_behavior": "  "}), r"bad\.jsonl:2: empty A_p"),
        (json.dumps({**GOOD, "answer_not_matching_behavior": " Yes"}), r"bad\.jsonl:2: A_p equals A_n"),
        (json.dumps(["a", "list"]), r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_statement_files_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    before = path.read_bytes()
    with pytest.raises(DataError, match=message):
        statement_pairs(path)
    assert path.read_bytes() == before, "a source file is never written"


@pytest.mark.parametrize(
    ("question", "answer", "message"),
    [
        ("Pick one.\n (A) yes\n (B) no", " (C)", r"answer ' \(C\)' names no option"),
        ("Pick one with no options.", " (A)", "the question lists fewer than two"),
    ],
)
def test_bad_choice_files(tmp_path, question, answer, message):
    path = tmp_path / "choices.jsonl"
    path.write_text(json.dumps({"question": question, "answer_matching_behavior": answer,
                                "answer_not_matching_behavior": " (B)"}) + "\n")
    with pytest.raises(DataError, match=r"choices\.jsonl:1: " + message):
        choice_pairs(path)


def test_unknown_task_and_source():
    with pytest.raises(ValueError, match="unknown task 'sycophancy'"):
        load_task("sycophancy", get_profile("cpu"))
    with pytest.raises(ValueError, match="unknown data source 'web'"):
        load_task("psychopathy", get_profile("cpu"), source="web")


def test_axbench_needs_the_model(no_real_data):
    with pytest.raises(ValueError, match="needs the model and tokenizer"):
        load_task("axbench", get_profile("cpu"))
