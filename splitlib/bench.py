"""Benchmarks (speed, not correctness): `python -m splitlib.bench {sweep,train} [options]`.

Each prints one JSON line: wall times, the speed-up, and how close the work came to the device's
peak. Never asserted in tests: wall times depend on the machine (the FLOP accounting is tested).

Options: `--profile NAME` (default cpu), `--random-weights` (the profile's architecture with seeded
random weights, `load_model("random:<profile>")`, the embedded tokenizer standing in), `--device
cpu` (run a cuda profile on the CPU; without it a cuda profile on a machine without CUDA stops
with a message), `--pairs N`, `--multipliers K`, `--answer-tokens T` (synthetic AxBench-style
pairs whose answers are exactly T tokens, instead of the Psychopathy task), `--naive-pairs N` (time
the naive loop on the first N pairs only; the speed-up compares time per (pair, m)), `--steps S`,
`--form`, `--method` (training), `--attention IMPL` (the attention implementation instead of the
profile's: eager, sdpa or flex_attention), `--token-budget N` (the engine's tokens per upper-pass
forward instead of the one it derives from the device's free memory: what a smaller card would get).

Ideal FLOPs (what the work needs at the least; `achieved_flops_per_s` = ideal FLOPs / wall time,
and `share_of_peak` divides that by a large matmul in the run's dtype timed on the same device):

- tokens: the distinct tokens of a prefix tree over all the sweep's prompts (a token shared by
  several prompts' common beginning counts once; answers never) plus both answers of every pair.
  The engine packs pairs into rows and shares only each row's common prefix, so it computes at
  least this many tokens (and the naive loop computes the prompt twice per pair, per m);
  `tokens_unshared` (prompt + A_p + A_n per pair) is an upper bound for the engine.
- a sweep at intervention layer L with K multipliers (layer L's steered output is its unsteered
  output plus m·Δh, so layer L runs once too):
  2 x (parameters of decoder layers 0..L) x tokens, once;
  + 2 x (parameters of layers L+1..end + the final norm) x tokens x K;
  + 2 x hidden x vocab x scored tokens x K for the LM head (scored: the answer tokens);
  + attention scores and their weighted sum, 4 x (heads x head_dim) x sum over tokens of the keys
  each attends to (its depth in the tree + 1), per layer: L + 1 layers once, the others K times.
  (Gemma-2's sliding window, 4096, is longer than any row here; norms, activations, the
  intervention itself and softmax are left out.)
- a training step (layers 0..L computed once beforehand and not counted): the forward of layers
  L+1..end + final norm, 2 x parameters x tokens, and the LM head at the scored tokens, doubled
  for the backward (the weights are frozen: only input gradients, as many FLOPs as the forward);
  attention 4 x width x keys per layer forward and twice that backward. Training rows hold one pair
  each (each pair has its own m), so tokens are prompt + A_p + A_n per pair.
"""
from __future__ import annotations

import argparse
import inspect
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .data import PolarityPair
    from .models import CausalLM
    from .profiles import Profile
    from .scoring import EncodedPair, Tokenizer

T = TypeVar("T")

# ----- FLOP accounting (pure functions of parameter and token counts) -----------------------------------


@dataclass(frozen=True)
class ModelCounts:
    """What the FLOP formulas need to know about a model."""

    layer_params: tuple[int, ...]  # parameters of each decoder layer (norms included)
    final_norm_params: int
    hidden_size: int
    vocab_size: int
    attention_width: int  # heads x head dim: the width of queries, keys and values per token

    @classmethod
    def of(cls, model: CausalLM) -> ModelCounts:
        from .models import decoder_layers

        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        norm = model.get_decoder().norm
        return cls(
            layer_params=tuple(sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model)),
            final_norm_params=sum(p.numel() for p in norm.parameters()),
            hidden_size=config.hidden_size,
            vocab_size=model.get_output_embeddings().weight.shape[0],
            attention_width=heads * head_dim,
        )

    @property
    def n_layers(self) -> int:
        return len(self.layer_params)


@dataclass(frozen=True)
class TokenCounts:
    """Tokens an ideal pass computes, the answer tokens it scores, and the attention they need."""

    tokens: int  # distinct tokens computed
    scored: int  # answer tokens whose next-token logits are read
    keys: int  # sum over computed tokens of the keys each attends to (depth + 1)
    unshared: int  # prompt + A_p + A_n per pair, nothing shared between pairs


def _answers(prompt_length: int, answer_length: int) -> tuple[int, int]:
    """Tokens and attended keys of an answer that follows a prompt of `prompt_length` tokens."""
    keys = answer_length * prompt_length + answer_length * (answer_length + 1) // 2
    return answer_length, keys


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tree_tokens(encoded: Sequence[EncodedPair]) -> TokenCounts:
    """Token counts of the sweep's ideal: all prompts in one prefix tree, both answers per pair.

    `encoded` holds objects with `prompt`, `positive` and `negative` token sequences
    (`splitlib.scoring.EncodedPair`). Distinct tree nodes = the sum of the sorted prompts' lengths
    less each one's common prefix with the one before it.
    """
    prompts = sorted(tuple(pair.prompt) for pair in encoded)
    tokens = keys = 0
    previous: tuple[int, ...] = ()
    for prompt in prompts:
        shared = _common(prompt, previous)
        tokens += len(prompt) - shared
        keys += len(prompt) * (len(prompt) + 1) // 2 - shared * (shared + 1) // 2
        previous = prompt
    scored = 0
    for pair in encoded:
        for answer in (pair.positive, pair.negative):
            n, k = _answers(len(pair.prompt), len(answer))
            tokens, keys, scored = tokens + n, keys + k, scored + n
    unshared = sum(p.length for p in encoded)
    return TokenCounts(tokens, scored, keys, unshared)


def pair_tokens(encoded: Sequence[EncodedPair]) -> TokenCounts:
    """Token counts when every pair is a tree of its own (its prompt once, then both answers)."""
    totals = [tree_tokens([pair]) for pair in encoded]
    return TokenCounts(*(sum(getattr(t, name) for t in totals) for name in ("tokens", "scored", "keys", "unshared")))


def sweep_flops(counts: ModelCounts, layer: int, tokens: TokenCounts, n_multipliers: int) -> dict[str, int]:
    """Ideal FLOPs of a sweep at intervention layer `layer` with `n_multipliers` multipliers."""
    if not 0 <= layer < counts.n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{counts.n_layers - 1}")
    lower = 2 * sum(counts.layer_params[: layer + 1]) * tokens.tokens
    upper = 2 * (sum(counts.layer_params[layer + 1 :]) + counts.final_norm_params) * tokens.tokens * n_multipliers
    head = 2 * counts.hidden_size * counts.vocab_size * tokens.scored * n_multipliers
    layer_passes = layer + 1 + (counts.n_layers - layer - 1) * n_multipliers
    attention = 4 * counts.attention_width * tokens.keys * layer_passes
    return {"lower": lower, "upper": upper, "head": head, "attention": attention,
            "total": lower + upper + head + attention}


def train_flops(counts: ModelCounts, layer: int, tokens: TokenCounts) -> dict[str, int]:
    """Ideal FLOPs of training on `tokens` (all steps together) at `layer`, layers 0..L reused."""
    if not 0 <= layer < counts.n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{counts.n_layers - 1}")
    above = counts.layer_params[layer + 1 :]
    forward = 2 * (sum(above) + counts.final_norm_params) * tokens.tokens
    head = 2 * counts.hidden_size * counts.vocab_size * tokens.scored
    attention = 4 * counts.attention_width * tokens.keys * len(above)
    return {"forward": forward + head + attention, "backward": forward + head + 2 * attention,
            "total": 2 * (forward + head) + 3 * attention}


# ----- the device -------------------------------------------------------------------------------------
def synchronize(device: object) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], device: object) -> tuple[T, float]:
    """(fn(), seconds), with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def matmul_peak(device: str, dtype: str | torch.dtype, size: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of one large square matmul in `dtype` on `device` (after a warm-up; the median of
    `repeats` timings): the practical peak the benchmarks compare against."""
    import torch

    from .models import parse_dtype

    dtype = parse_dtype(dtype)
    cuda = str(device).startswith("cuda")
    size = size or (4096 if cuda else 1024)
    inner = 20 if cuda else 2
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)

    def run() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    for _ in range(2):
        timed(run, device)
    seconds = statistics.median(timed(run, device)[1] / inner for _ in range(repeats))
    return {"peak_flops_per_s": 2 * size**3 / seconds, "peak_matmul": f"{size}x{size} @ {size}x{size} "
            f"{str(dtype).removeprefix('torch.')}, median of {repeats}"}


def device_name(device: str) -> str:
    import platform

    import torch

    if str(device).startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def peak_memory(device: str) -> dict[str, object]:
    """The largest memory the run held: allocated on the GPU, resident on a CPU (ru_maxrss)."""
    import torch

    rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if str(device).startswith("cuda"):
        return {"peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_memory_of": "torch.cuda.max_memory_allocated", "peak_rss_mib": rss}
    return {"peak_memory_mib": rss, "peak_memory_of": "ru_maxrss", "peak_rss_mib": rss}


def resolve_device(profile: Profile, device: str | None) -> str:
    """The device to run on: `device` if given, else the profile's, which must exist here."""
    import torch

    chosen = device or profile.device
    if chosen.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"splitlib.bench: profile {profile.name!r} runs on {chosen}, but this machine has no CUDA device; "
            "pass --device cpu to run it on the CPU instead (a paper-size model is slow there and needs "
            "about 4 bytes of memory per parameter in float32, 2 in bfloat16)"
        )
    return chosen


# ----- data -------------------------------------------------------------------------------------------
_CONCEPT_WORDS = ("ocean wave reef tide salt shore ship sail deep blue fish coral storm harbor island sea "
                  "boat water wind sand shell whale current anchor beach").split()
_PLAIN_WORDS = ("the day was long and we went to see what the town could offer before dinner so that "
                "people would know how to find their way home after work when it got late in the year").split()
_TOPICS = ("a city at night", "a morning walk", "a new job", "an old friend", "a rainy day", "a kitchen",
           "a train ride", "a garden", "a library", "a small shop", "a mountain road", "a winter evening")


def _single_token_words(tokenizer: Tokenizer, words: Sequence[str]) -> list[str]:
    """Words that are one token both at the start of a text and after a space (so T words make T tokens)."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    kept = [w for w in dict.fromkeys(words) if len(ids(w)) == 1 and len(ids(" " + w)) == 1]
    if len(kept) < 4:
        raise ValueError("the tokenizer splits almost every filler word: cannot build fixed-length answers")
    return kept


def synthetic_pairs(tokenizer: Tokenizer, n_pairs: int, answer_tokens: int, seed: int = 0) -> list[PolarityPair]:
    """AxBench-style pairs (an instruction, a concept-laden A_p, a plain A_n) whose answers are
    exactly `answer_tokens` tokens under `tokenizer`; deterministic filler text for timing only."""
    from .data import PolarityPair

    if answer_tokens < 1:
        raise ValueError(f"answers need at least one token, got {answer_tokens}")
    concept = _single_token_words(tokenizer, _CONCEPT_WORDS)
    plain = _single_token_words(tokenizer, _PLAIN_WORDS)
    pairs = []
    for i in range(n_pairs):
        rng = random.Random(seed * 100_003 + i)
        question = f"Write a short passage about {_TOPICS[i % len(_TOPICS)]} (number {i + 1})."
        positive = " ".join(rng.choice(concept) for _ in range(answer_tokens))
        negative = " ".join(rng.choice(plain) for _ in range(answer_tokens))
        pairs.append(PolarityPair(f"syn-{i:04d}", question, positive, negative, "synthetic"))
    return pairs


def psychopathy_pairs(profile: Profile) -> tuple[list, list, str]:
    """(train, test, origin) of the Psychopathy task at the profile's sizes; where the real file is
    missing and the bundled set is too small for those sizes, the bundled set at the sizes it holds."""
    from .data import DataError, load_task
    from .profiles import SplitSizes

    try:
        task = load_task("psychopathy", profile)
    except (DataError, FileNotFoundError):  # a paper profile without the real file stops in load_task
        sizes = SplitSizes(96, 48)
        task = load_task("psychopathy", replace(profile, splits={**profile.splits, "psychopathy": sizes}),
                         source="bundled")
        task.origin += f" (at {sizes.train}/{sizes.test}: the profile's sizes need the real file, $SPLITLIB_DATA)"
    return task.train, task.test, task.origin


def _take(pool: Sequence[object], n: int, what: str) -> list:
    if n > len(pool):
        raise SystemExit(f"splitlib.bench: {n} {what} asked for, but only {len(pool)} are available")
    return list(pool[:n])


def bench_profile(profile_name: str, attention: str | None = None, token_budget: int | None = None) -> Profile:
    """The named profile with its attention implementation and engine token budget replaced where given."""
    from .attention import PACKABLE
    from .profiles import get_profile

    profile = get_profile(profile_name)
    if attention is not None:
        if attention not in PACKABLE:
            raise SystemExit(f"splitlib.bench: --attention {attention!r} cannot run packed rows; "
                             f"choose one of {', '.join(PACKABLE)}")
        profile = replace(profile, attn_implementation=attention)
    if token_budget is not None:
        try:
            profile = replace(profile, engine=replace(profile.engine, token_budget=token_budget))
        except ValueError as error:  # EngineSettings names the problem (a budget below one row)
            raise SystemExit(f"splitlib.bench: --token-budget: {error}") from None
    return profile


def _load(profile: Profile, random_weights: bool, device: str) -> tuple[CausalLM, Tokenizer]:
    from .models import as_causal_lm, load_model

    model, tokenizer = load_model(profile, random_weights=random_weights, device=device)
    return as_causal_lm(model), tokenizer


def _header(benchmark: str, profile: Profile, model: CausalLM, device: str, random_weights: bool) -> dict[str, object]:
    import torch

    return {"benchmark": benchmark, "profile": profile.name, "model": str(model.config.name_or_path),
            "random_weights": random_weights, "device": device_name(device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "attention": getattr(model.config, "_attn_implementation", None), "threads": torch.get_num_threads()}


def _engine_options(function: Callable[..., object], profile: Any) -> dict[str, Any]:
    """The profile's batching option for `function` (run_sweep, Trainer): engine `settings`, or an
    older checkout's `batch_size`. (`profile`: Any, as the benchmark also runs against checkouts
    whose Profile, run_sweep and Trainer differ.)"""
    parameters = inspect.signature(function).parameters
    if "settings" in parameters and getattr(profile, "engine", None) is not None:
        return {"settings": profile.engine}
    if "batch_size" in parameters and hasattr(profile, "batch_size"):
        return {"batch_size": profile.batch_size}
    return {}


def _token_budget(profile: Any, model: CausalLM) -> int | None:
    """The engine's tokens per upper-pass forward for this profile on this device (None before the engine)."""
    try:
        from .engine import resolved
    except ImportError:
        return None
    return resolved(profile.engine, model).token_budget


# ----- the benchmarks ---------------------------------------------------------------------------------
def bench_sweep(profile_name: str = "cpu", random_weights: bool = False, device: str | None = None,
                n_pairs: int = 16, n_multipliers: int = 9, answer_tokens: int | None = None,
                naive_pairs: int | None = None, attention: str | None = None,
                token_budget: int | None = None) -> dict[str, object]:
    """The engine (`run_sweep`) against the naive loop (one hooked forward per pair per m)."""

    from . import diffmean, residual_norm
    from .scoring import encode_pair
    from .sweep import naive_sweep, run_sweep

    profile = bench_profile(profile_name, attention, token_budget)
    device = resolve_device(profile, device)
    model, tokenizer = _load(profile, random_weights, device)
    if answer_tokens:
        pairs = synthetic_pairs(tokenizer, n_pairs, answer_tokens)
        reference = pairs
        data = f"{n_pairs} synthetic AxBench-style pairs, answers of {answer_tokens} tokens"
    else:
        reference, test, data = psychopathy_pairs(profile)
        pairs = _take(test + reference, n_pairs, "pairs")
        data = f"psychopathy: {data}"
    naive_pairs = min(naive_pairs or len(pairs), len(pairs))
    vector = diffmean(model, tokenizer, reference, profile.layer, max_answer_tokens=answer_tokens)
    # Multipliers that move the residual stream by up to one typical norm: all three regions.
    unit = residual_norm(model, tokenizer, reference, profile.layer, max_answer_tokens=answer_tokens)
    unit /= float(vector.delta_b.detach().norm())
    grid = [float(x) for x in np.linspace(-1, 1, n_multipliers) * unit]
    options: dict[str, Any] = dict(cache=False, progress=False, max_answer_tokens=answer_tokens,
                                   **_engine_options(run_sweep, profile))
    budget = _token_budget(profile, model)

    def engine(chosen: Sequence, multipliers: Sequence[float]) -> pd.DataFrame:
        return run_sweep(model, tokenizer, chosen, vector, multipliers, **options)

    def naive(chosen: Sequence, multipliers: Sequence[float]) -> pd.DataFrame:
        return naive_sweep(model, tokenizer, chosen, vector, multipliers, max_answer_tokens=answer_tokens)

    engine(pairs[:2], grid[:2])  # warm-up: kernels, allocator, attention plans
    naive(pairs[:1], grid[:1])
    fast, engine_s = timed(lambda: engine(pairs, grid), device)
    slow, naive_s = timed(lambda: naive(pairs[:naive_pairs], grid), device)

    key = ["pair_id", "m"]
    both = slow.merge(fast, on=key, suffixes=("_naive", "_engine"), validate="one_to_one")
    diff = max(float((both[f"{c}_engine"] - both[f"{c}_naive"]).abs().max()) for c in ("loss_p", "loss_n"))
    engine_each = engine_s / (len(pairs) * len(grid))
    naive_each = naive_s / (naive_pairs * len(grid))

    encoded = [encode_pair(tokenizer, p.question, p.positive, p.negative, answer_tokens) for p in pairs]
    tokens = tree_tokens(encoded)
    counts = ModelCounts.of(model)
    flops = sweep_flops(counts, profile.layer, tokens, len(grid))
    dtype = next(model.parameters()).dtype
    peak = matmul_peak(device, dtype)
    achieved = flops["total"] / engine_s
    return {
        **_header("sweep", profile, model, device, random_weights),
        "data": data, "pairs": len(pairs), "multipliers": len(grid), "layer": profile.layer,
        "naive_pairs": naive_pairs, "token_budget": budget,
        "naive_s": round(naive_s, 3), "engine_s": round(engine_s, 3),
        "naive_ms_per_pair_m": round(1e3 * naive_each, 3), "engine_ms_per_pair_m": round(1e3 * engine_each, 3),
        "speedup": round(naive_each / engine_each, 2),
        "max_abs_diff": diff, "loss_median": round(float(np.median(fast[["loss_p", "loss_n"]].to_numpy())), 4),
        "tokens": tokens.tokens, "tokens_unshared": tokens.unshared, "scored_tokens": tokens.scored,
        "ideal_flops": flops["total"], "ideal_flops_parts": {k: v for k, v in flops.items() if k != "total"},
        "achieved_flops_per_s": achieved, **peak, "share_of_peak": round(achieved / peak["peak_flops_per_s"], 4),
        **peak_memory(device),
    }


def bench_train(profile_name: str = "cpu", random_weights: bool = False, device: str | None = None,
                steps: int = 12, form: str = "lora", method: str = "split", n_pairs: int | None = None,
                answer_tokens: int | None = None, attention: str | None = None) -> dict[str, object]:
    """Training steps with layers 0..L computed once against steps through the whole model."""

    from .scoring import encode_pair
    from .train import Trainer, config_for

    profile = bench_profile(profile_name, attention)
    device = resolve_device(profile, device)
    model, tokenizer = _load(profile, random_weights, device)
    if answer_tokens:
        pairs = synthetic_pairs(tokenizer, n_pairs or 64, answer_tokens)
        data = f"{len(pairs)} synthetic AxBench-style pairs, answers of {answer_tokens} tokens"
    else:
        train, _, origin = psychopathy_pairs(profile)
        pairs = _take(train, n_pairs or len(train), "training pairs")
        data = f"psychopathy: {origin}"
    config = config_for(profile, "psychopathy", method, form)
    result: dict[str, Any] = {
        **_header("train", profile, model, device, random_weights), "data": data, "pairs": len(pairs),
        "method": method, "form": form, "layer": profile.layer, "n_layers": model.config.num_hidden_layers,
        "batch_size": config.batch_size, "grad_accum": config.grad_accum, "steps": steps,
    }
    timed_batches = None
    for reuse in (False, True):
        trainer = Trainer(model, tokenizer, pairs, method, form, profile.layer, config,
                          rank=profile.lora_rank, reuse_lower_layers=reuse, **_engine_options(Trainer, profile))
        trainer.train(progress=False, max_steps=1)  # warm-up
        # The lambda is called within this iteration, so it cannot see a later `trainer`.
        _, elapsed = timed(lambda: trainer.train(progress=False, max_steps=steps), device)  # noqa: B023
        name = "reused" if reuse else "whole_model"
        result[f"{name}_s"] = round(elapsed, 3)
        result[f"{name}_step_ms"] = round(1e3 * elapsed / steps, 2)
        result[f"final_loss_{name}"] = round(trainer.history[-1], 5)
        if timed_batches is None:
            timed_batches = _scheduled_pairs(trainer, steps * max(1, config.grad_accum))
    result["speedup"] = round(result["whole_model_s"] / result["reused_s"], 2)

    if timed_batches is not None:
        chosen, exact = [pairs[i] for i in timed_batches], True
    else:  # a Trainer without a readable schedule: the average pair, as many times as the steps use
        per_step = config.batch_size * max(1, config.grad_accum) * steps
        chosen, exact = [pairs[i % len(pairs)] for i in range(per_step)], False
    tokens = pair_tokens([encode_pair(tokenizer, p.question, p.positive, p.negative) for p in chosen])
    flops = train_flops(ModelCounts.of(model), profile.layer, tokens)
    peak = matmul_peak(device, next(model.parameters()).dtype)
    result.update({
        "tokens": tokens.tokens, "scored_tokens": tokens.scored, "tokens_exact": exact,
        "ideal_flops": flops["total"],
        "achieved_flops_per_s_whole_model": flops["total"] / result["whole_model_s"],
        "achieved_flops_per_s_reused": flops["total"] / result["reused_s"], **peak,
        "share_of_peak_whole_model": round(flops["total"] / result["whole_model_s"] / peak["peak_flops_per_s"], 4),
        "share_of_peak_reused": round(flops["total"] / result["reused_s"] / peak["peak_flops_per_s"], 4),
        **peak_memory(device),
    })
    return result


def _scheduled_pairs(trainer: object, n_batches: int) -> list[int] | None:
    """Pair indices of the first `n_batches` batches of the trainer's seeded schedule, if it has one."""
    schedule = getattr(trainer, "schedule", None)
    if schedule is None:
        return None
    try:
        return [item[0] for batch in schedule()[:n_batches] for item in batch]
    except (TypeError, IndexError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitlib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("sweep", "train"))
    parser.add_argument("--profile", default="cpu", help="run profile (default cpu)")
    parser.add_argument("--random-weights", action="store_true", help="the profile's architecture, random weights")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="override the profile's device")
    parser.add_argument("--pairs", type=int, default=None, help="pairs (sweep: 16; train: the training split)")
    parser.add_argument("--multipliers", type=int, default=9, help="multipliers of the sweep (default 9)")
    parser.add_argument("--answer-tokens", type=int, default=None, help="synthetic pairs with T-token answers")
    parser.add_argument("--naive-pairs", type=int, default=None, help="time the naive loop on this many pairs")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps (default 12)")
    parser.add_argument("--form", default="lora", help="training form (default lora)")
    parser.add_argument("--method", default="split", help="training method (default split)")
    parser.add_argument("--attention", default=None, help="attention implementation instead of the profile's")
    parser.add_argument("--token-budget", type=int, default=None,
                        help="engine tokens per upper-pass forward (sweep; default: from the device)")
    args = parser.parse_args(argv)
    for name in ("pairs", "multipliers", "answer_tokens", "naive_pairs", "steps", "token_budget"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    common = dict(profile_name=args.profile, random_weights=args.random_weights, device=args.device,
                  answer_tokens=args.answer_tokens, attention=args.attention)
    if args.which == "sweep":
        result = bench_sweep(n_pairs=args.pairs or 16, n_multipliers=args.multipliers,
                             naive_pairs=args.naive_pairs, token_budget=args.token_budget, **common)
    else:
        result = bench_train(steps=args.steps, form=args.form, method=args.method, n_pairs=args.pairs, **common)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
