"""Steered generations for open-ended evaluation (the paper's Table 3, §5.4): each update at its
chosen multiplier m answers the test questions, with the reference code's settings by default.

The reference code samples 128 new tokens at temperature 1 with seed 42 (everything else from the
model's own generation config, as `generate(do_sample=True, temperature=1.0)` does); `sample=False`
gives greedy answers instead. Each batch is seeded from the seed and the batch's own questions, so
a run resumed after a crash writes the same text as one that never stopped; each update's answers
are cached under a key of everything that determines them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .cache import ResumableBatches, cache_root, cached_artifact, source_digest, stable_hash
from .checks import check_int, check_number, check_positive_int, check_type, check_unique
from .data import PolarityPair
from .interventions import Intervention, check_intervention
from .models import as_causal_lm, model_fingerprint
from .scoring import Tokenizer, chat_prompt

if TYPE_CHECKING:
    import pandas as pd

Update = tuple[Intervention | None, float]  # an intervention (None: the unsteered model) and its m
COLUMNS = ("update", "m", "index", "question_id", "question", "concept", "generation")


def evaluation_generations(
    model: nn.Module,
    tokenizer: Tokenizer,
    questions: Sequence[PolarityPair | str],
    updates: Mapping[str, Update],
    *,
    max_new_tokens: int = 128,
    sample: bool = True,
    temperature: float = 1.0,
    seed: int = 42,
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (update, question): the answer of the model steered by each update at its m.

    `questions` are test pairs (their id, question and concept are kept; the concept is what the
    AxBench judge looks for) or plain strings (ids `q0000`, ...). `updates` maps a name such as
    "split · lora" to `(intervention, m)`; `(None, 0.0)` is the unsteered model. With `cache`, each
    update's answers are read from or written to the cache, batch by batch, so a killed run resumes.
    """
    items = _question_items(questions)
    checked = _check_updates(model, updates)
    check_positive_int("max_new_tokens", max_new_tokens)
    check_type("sample", sample, bool)
    check_int("seed", seed, low=0)
    check_positive_int("batch_size", batch_size)
    if sample:
        check_number("temperature", temperature, 0, open_low=True)
    settings = {"max_new_tokens": max_new_tokens, "sample": sample, "batch_size": batch_size,
                "temperature": float(temperature) if sample else None, "seed": seed if sample else None}
    rows = []
    for name, (intervention, m) in checked.items():
        texts = _update_answers(model, tokenizer, [item[1] for item in items], intervention, m, settings,
                                label=name, cache=cache, progress=progress)
        rows += [{"update": name, "m": m, "index": index, "question_id": qid, "question": question,
                  "concept": concept, "generation": text}
                 for index, ((qid, question, concept), text) in enumerate(zip(items, texts))]
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))


def generation_key(model: nn.Module, tokenizer: Tokenizer, questions: Sequence[str],
                   intervention: Intervention | None, m: float, settings: Mapping[str, object]) -> str:
    """The cache key of one update's answers: the model's weights, dtype, device type (and CPU
    threads, which change sums in their last digits), generation config and chat template, the
    intervention and m, the questions, the settings and this module's source."""
    from .engine import intervention_digest

    parameter = next(model.parameters())
    return stable_hash({
        "model": model_fingerprint(model), "dtype": str(parameter.dtype), "device": parameter.device.type,
        "threads": torch.get_num_threads() if parameter.device.type == "cpu" else None,
        "attention": getattr(as_causal_lm(model).config, "_attn_implementation", None),
        "generation_config": _generation_config(model),
        "template": getattr(tokenizer, "chat_template", None),
        "intervention": intervention_digest(intervention), "m": float(m),
        "questions": list(questions), "settings": dict(settings),
        "code": source_digest("generations", "interventions", "scoring"),
    }, length=24)


def _question_items(questions: object) -> list[tuple[str, str, str]]:
    """(id, question, concept) of each test question, checked: non-empty, ids unique."""
    if isinstance(questions, str) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list of PolarityPair or str, got {type(questions).__name__}")
    if not questions:
        raise ValueError("questions must hold at least one question")
    items = []
    for index, item in enumerate(questions):
        if isinstance(item, PolarityPair):
            items.append((item.id, item.question, item.concept))
        elif isinstance(item, str) and item.strip():
            items.append((f"q{index:04d}", item, ""))
        else:
            raise TypeError(f"questions[{index}] must be a PolarityPair or a non-empty str, got {item!r}")
    check_unique("questions' ids", (item[0] for item in items))
    return items


def _check_updates(model: nn.Module, updates: object) -> dict[str, tuple[Intervention | None, float]]:
    """Each update as (intervention, m) with m a finite float; m != 0 needs an intervention."""
    if not isinstance(updates, Mapping) or not updates:
        raise TypeError(f"updates must be a non-empty dict of name -> (intervention, m), got {updates!r}")
    checked = {}
    for name, value in updates.items():
        check_type("an update's name", name, str)
        if not isinstance(value, tuple) or len(value) != 2:
            raise TypeError(f"updates[{name!r}] must be a pair (intervention or None, m), got {value!r}")
        intervention, m = value
        check_intervention(model, intervention)
        m = check_number(f"updates[{name!r}]'s m", m)
        if intervention is None and m != 0:
            raise ValueError(f"updates[{name!r}] has m = {m:g} but no intervention; the unsteered model is (None, 0.0)")
        checked[name] = (intervention, m)
    return checked


def _generation_config(model: nn.Module) -> object:
    """The model's generation defaults (top_k, top_p, repetition penalty...), which sampling inherits."""
    config = getattr(model, "generation_config", None)
    return json.loads(config.to_json_string(use_diff=False)) if config is not None else None


def _update_answers(model: nn.Module, tokenizer: Tokenizer, questions: list[str], intervention: Intervention | None,
                    m: float, settings: dict, *, label: str, cache: bool, progress: bool) -> list[str]:
    """One update's answers, from the cache or generated batch by batch (resumable)."""
    if not cache:
        return _generate_all(model, tokenizer, questions, intervention, m, settings, None, label, progress)
    key = generation_key(model, tokenizer, questions, intervention, m, settings)
    folder = cache_root() / "evaluation-generations"

    def build(tmp: Path) -> None:
        with ResumableBatches(folder / f".batches-{key}") as batches:
            answers = _generate_all(model, tokenizer, questions, intervention, m, settings, batches, label, progress)
        tmp.write_text(json.dumps(answers, ensure_ascii=False))

    path = cached_artifact(folder / f"{key}.json", build, made_by="evaluation_generations")
    return json.loads(path.read_text())


def _generate_all(model: nn.Module, tokenizer: Tokenizer, questions: list[str], intervention: Intervention | None,
                  m: float, settings: dict, batches: ResumableBatches | None, label: str, progress: bool) -> list[str]:
    """Every batch's answers, reading finished batches from `batches` and saving new ones there."""
    import numpy as np
    from tqdm.auto import tqdm

    size = settings["batch_size"]
    starts = range(0, len(questions), size)
    answers: list[str] = []
    for number, start in enumerate(tqdm(starts, desc=f"generate {label}", disable=not progress, unit="batch")):
        chunk = questions[start : start + size]
        saved = batches.load(number) if batches is not None else None
        if saved is None:
            texts = generate_batch(model, tokenizer, chunk, intervention, m, settings)
            if batches is not None:
                batches.save(number, np.array(texts, dtype=str))
        else:
            texts = [str(text) for text in saved.tolist()]
        answers += texts
    return answers


def batch_seed(seed: int, questions: Sequence[str]) -> int:
    """The sampling seed of one batch: from the run's seed and the batch's questions, so a resumed
    run (or the same batch in another update) draws the same random numbers."""
    return int(stable_hash({"seed": seed, "questions": list(questions)}), 16) % (2**63)


def generate_batch(model: nn.Module, tokenizer: Tokenizer, questions: list[str], intervention: Intervention | None,
                   m: float, settings: Mapping) -> list[str]:
    """Answers to one batch of questions (left-padded chat prompts), steered by `intervention` at m."""
    from contextlib import nullcontext

    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        batch = tokenizer([chat_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    options: dict[str, object] = {"do_sample": settings["sample"], "max_new_tokens": settings["max_new_tokens"],
                                  "pad_token_id": tokenizer.pad_token_id}
    if settings["sample"]:
        options["temperature"] = settings["temperature"]
    cuda = [device] if device.type == "cuda" else []
    steering = intervention.apply(model, m) if intervention is not None else nullcontext()
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), steering:  # seeded without touching the caller's RNG
        torch.manual_seed(batch_seed(int(settings["seed"] or 0), questions))
        out = as_causal_lm(model).generate(**batch, **options)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in texts]
