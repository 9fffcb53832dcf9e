"""Steered generations for the judges: seeded, cached by everything that determines them, resumable."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from splitlib import generations as generations_module
from splitlib.data import PolarityPair
from splitlib.generations import evaluation_generations
from splitlib.interventions import Intervention
from splitlib.models import generate

QUESTIONS = ["Hi?", "Name a colour.", "Two plus two?", "Say yes.", "A fruit?"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a loaded machine idle threads cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    from conftest import tiny_model

    return tiny_model("llama", vocab_size=49152)


@pytest.fixture(scope="module")
def vector(llama) -> Intervention:
    return Intervention.random(llama, "vector", 2, gain=50.0)


def run(model, tokenizer, updates, **options):
    questions = options.pop("questions", QUESTIONS)
    settings = {"max_new_tokens": 4, "batch_size": 2, "progress": False, **options}
    return evaluation_generations(model, tokenizer, questions, updates, **settings)


def counting(monkeypatch: pytest.MonkeyPatch, dies_at: int | None = None) -> list[int]:
    """Count generated batches; raise KeyboardInterrupt at batch `dies_at` (1-based), as a kill would."""
    real = generations_module.generate_batch
    calls: list[int] = []

    def counted(*args: object, **kwargs: object) -> list[str]:
        calls.append(1)
        if len(calls) == dies_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(generations_module, "generate_batch", counted)
    return calls


def test_one_row_per_update_and_question_seeded_and_cached(llama, tokenizer, vector, cache_dir, monkeypatch):
    updates = {"vanilla": (None, 0.0), "steered": (vector, 1.0)}
    calls = counting(monkeypatch)
    table = run(llama, tokenizer, updates)
    assert list(table.columns) == ["update", "m", "index", "question_id", "question", "concept", "generation"]
    assert len(table) == 10 and table["update"].tolist() == ["vanilla"] * 5 + ["steered"] * 5
    assert table["question_id"].tolist()[:2] == ["q0000", "q0001"] and table["m"].tolist()[-1] == 1.0
    assert len(calls) == 6  # three batches of two for each update
    again = run(llama, tokenizer, updates)
    assert len(calls) == 6  # from the cache
    assert again.equals(table)
    fresh = run(llama, tokenizer, updates, cache=False)
    assert len(calls) == 12 and fresh.equals(table)  # the same seed, the same text, cache or not
    other_seed = run(llama, tokenizer, updates, seed=7, cache=False)
    assert other_seed["generation"].tolist() != table["generation"].tolist()
    steered, vanilla = (table[table["update"] == name]["generation"].tolist() for name in ("steered", "vanilla"))
    assert steered != vanilla


def test_the_key_follows_what_determines_the_text(llama, tokenizer, vector, cache_dir, monkeypatch):
    calls = counting(monkeypatch)
    run(llama, tokenizer, {"s": (vector, 1.0)})
    for change in ({"seed": 1}, {"max_new_tokens": 3}, {"temperature": 0.5}, {"sample": False}):
        before = len(calls)
        run(llama, tokenizer, {"s": (vector, 1.0)}, **change)
        assert len(calls) == before + 3, change
    before = len(calls)
    run(llama, tokenizer, {"s": (vector, 2.0)})  # another m
    run(llama, tokenizer, {"s": (Intervention.random(llama, "vector", 2, seed=1), 1.0)})  # another update
    assert len(calls) == before + 6
    run(llama, tokenizer, {"renamed": (vector, 1.0)})  # a name is not part of the text
    run(llama, tokenizer, {"s": (vector, 1.0)}, sample=False, seed=5)  # nor a seed when greedy
    assert len(calls) == before + 6


def test_a_killed_run_resumes_per_batch_with_the_same_text(llama, tokenizer, vector, cache_dir, monkeypatch, tmp_path):
    updates = {"steered": (vector, 1.0)}
    calls = counting(monkeypatch, dies_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(llama, tokenizer, updates)
    assert len(calls) == 3
    resumed = run(llama, tokenizer, updates)
    assert len(calls) == 4  # only the third batch again
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path / "elsewhere"))
    assert run(llama, tokenizer, updates).equals(resumed)  # as if it had never stopped


def test_greedy_matches_splitlib_generate_and_pairs_keep_their_ids(llama, tokenizer, cache_dir):
    pairs = [PolarityPair(f"p{i}", q, "Yes", "No", "test", concept="colours") for i, q in enumerate(QUESTIONS[:3])]
    table = run(llama, tokenizer, {"vanilla": (None, 0.0)}, sample=False, questions=pairs)
    assert table["generation"].tolist() == generate(llama, tokenizer, QUESTIONS[:3], 4, batch_size=2)
    assert table["question_id"].tolist() == ["p0", "p1", "p2"] and set(table["concept"]) == {"colours"}


def test_bad_arguments_are_named(llama, tokenizer, vector, cache_dir):
    with pytest.raises(ValueError, match="no intervention"):
        run(llama, tokenizer, {"x": (None, 1.0)})
    with pytest.raises(TypeError, match=r"updates\['x'\] must be a pair"):
        run(llama, tokenizer, {"x": vector})
    with pytest.raises(TypeError, match="updates must be a non-empty dict"):
        run(llama, tokenizer, {})
    with pytest.raises(ValueError, match="max_new_tokens"):
        run(llama, tokenizer, {"x": (vector, 1.0)}, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        run(llama, tokenizer, {"x": (vector, 1.0)}, temperature=0.0)
    with pytest.raises(ValueError, match="at least one question"):
        run(llama, tokenizer, {"x": (vector, 1.0)}, questions=[])
    with pytest.raises(TypeError, match=r"questions\[1\]"):
        run(llama, tokenizer, {"x": (vector, 1.0)}, questions=["ok", 3])
    with pytest.raises(ValueError, match="does not fit"):
        run(llama, tokenizer, {"x": (Intervention("vector", 1, delta_b=torch.ones(5)), 1.0)})
    assert not list(cache_dir.rglob("*.json"))
