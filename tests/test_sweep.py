"""The sweep engine: equal to the naive loop, independent of batching, cached correctly."""
from __future__ import annotations

import multiprocessing

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import QUESTIONS, counting_batches, tiny_model

from splitlib import FORMS, Intervention
from splitlib import engine as engine_module
from splitlib import sweep as sweep_module
from splitlib.data import PolarityPair
from splitlib.engine import EngineSettings
from splitlib.sweep import naive_sweep, run_sweep
from splitlib.train import diffmean

LAYER = 2
GRID = [-3.0, -1.0, 0.0, 0.5, 2.0]
TWO_PER_ROW = EngineSettings(pairs_per_row=2)
def _close(a: pd.DataFrame, b: pd.DataFrame, atol: float, rtol: float = 0.0) -> None:
    assert list(a.pair_id) == list(b.pair_id) and list(a.m) == list(b.m)
    for column in ("loss_p", "loss_n", "pref_odds", "util_odds"):
        np.testing.assert_allclose(a[column], b[column], rtol=rtol, atol=atol, err_msg=column)


@pytest.mark.parametrize("form", FORMS)
def test_the_engine_equals_the_naive_loop(big_model, tokenizer, pairs, form):
    intervention = Intervention.random(big_model, form, LAYER, seed=1, gain=4.0)
    fast = run_sweep(big_model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    slow = naive_sweep(big_model, tokenizer, pairs, intervention, GRID)
    _close(fast, slow, atol=1e-4)
    assert fast.loss_p.std() > 0.01, "the intervention should move the losses"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ["gemma2", "qwen2"])
def test_the_engine_equals_the_naive_loop_on_every_architecture(tokenizer, pairs, arch, form):
    """The engine adds m·Δh to the intervention layer's unsteered output instead of running that
    layer per m; Gemma-2 puts a norm between the down-projection and the residual add, which the
    sum must pass through as the layer itself would."""
    model = tiny_model(arch, vocab_size=49152)
    intervention = Intervention.random(model, form, LAYER, seed=5, gain=4.0)
    fast = run_sweep(model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    slow = naive_sweep(model, tokenizer, pairs, intervention, GRID)
    _close(fast, slow, atol=1e-4)
    assert fast.loss_p.std() > 0.01, "the intervention should move the losses"


@pytest.mark.parametrize("layer", [0, 3])  # the first layer, and the last: nothing runs above it but the final norm
def test_the_engine_equals_the_naive_loop_at_the_ends_of_the_stack(big_model, tokenizer, pairs, layer):
    intervention = Intervention.random(big_model, "local_weight", layer, seed=6, gain=4.0)
    fast = run_sweep(big_model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    slow = naive_sweep(big_model, tokenizer, pairs, intervention, GRID)
    _close(fast, slow, atol=1e-4)
    assert fast.loss_p.std() > 0.01, "the intervention should move the losses"


@pytest.mark.parametrize("loss", ["mean", "sum"])
def test_a_batch_equals_one_pair_at_a_time(big_model, tokenizer, pairs, loss):
    intervention = Intervention.random(big_model, "lora", LAYER, seed=2, gain=4.0)
    together = run_sweep(big_model, tokenizer, pairs, intervention, GRID, settings=EngineSettings(pairs_per_row=16),
                         loss=loss, cache=False, progress=False)
    alone = run_sweep(big_model, tokenizer, pairs, intervention, GRID, settings=EngineSettings(pairs_per_row=1),
                      loss=loss, cache=False, progress=False)
    _close(together, alone, atol=1e-5, rtol=1e-6)  # summed losses reach ~130: float32 keeps ~7 digits


@pytest.mark.parametrize("form", FORMS)
def test_batched_multipliers_equal_one_multiplier_per_forward(big_model, tokenizer, pairs, form):
    intervention = Intervention.random(big_model, form, LAYER, seed=8, gain=4.0)
    # rows of two short pairs hold 77-107 tokens: a budget of 128 fits one copy per forward, 10^6 all of them
    one_by_one = run_sweep(big_model, tokenizer, pairs, intervention, GRID, cache=False, progress=False,
                           settings=EngineSettings(token_budget=128, row_tokens=128, pairs_per_row=2))
    together = run_sweep(big_model, tokenizer, pairs, intervention, GRID, cache=False, progress=False,
                         settings=EngineSettings(token_budget=10**6, row_tokens=128, pairs_per_row=2))
    _close(together, one_by_one, atol=1e-5)


def test_the_lm_head_in_chunks_equals_one_call(big_model, tokenizer, pairs, monkeypatch):
    intervention = Intervention.random(big_model, "vector", LAYER, seed=3, gain=4.0)
    whole = run_sweep(big_model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    calls = []
    lm_logits = engine_module.lm_logits
    monkeypatch.setattr(engine_module, "lm_logits", lambda model, hidden: calls.append(len(hidden)) or
                        lm_logits(model, hidden))
    monkeypatch.setattr(engine_module, "LOGIT_ELEMENTS", 5 * 49152)  # five scored tokens per call
    chunked = run_sweep(big_model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    assert max(calls) == 5 and len(calls) > 2 * len(GRID)
    _close(chunked, whole, atol=4e-6)  # a few float32 ulps of losses near 10 (ulp 9.5e-7): chunks sum in another order


def test_padding_rows_to_a_multiple_changes_nothing(tokenizer, pairs):
    model = tiny_model("gemma2", vocab_size=49152)
    intervention = Intervention.random(model, "lora", LAYER, seed=11, gain=4.0)
    plain = run_sweep(model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    padded = run_sweep(model, tokenizer, pairs, intervention, GRID, settings=EngineSettings(pad_to=64),
                       cache=False, progress=False)
    _close(padded, plain, atol=1e-5)


def test_bfloat16_engine_against_the_naive_loop(tokenizer, pairs):
    """bf16 keeps ~3 significant digits, and the engine adds in another order than the naive loop:
    losses agree to 2 % of their size, the bf16 scoring noise the book states."""
    model = tiny_model("qwen2", vocab_size=49152).to(torch.bfloat16)
    intervention = Intervention.random(model, "lora", LAYER, seed=9, gain=4.0)
    fast = run_sweep(model, tokenizer, pairs, intervention, GRID, cache=False, progress=False)
    slow = naive_sweep(model, tokenizer, pairs, intervention, GRID)
    for column in ("loss_p", "loss_n"):
        np.testing.assert_allclose(fast[column], slow[column], rtol=0.02, err_msg=column)


def test_a_numpy_grid_is_a_grid(tokenizer, pairs):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=3, gain=4.0)
    as_array = run_sweep(model, tokenizer, pairs, intervention, np.array([0.0, 1.0]), cache=False, progress=False)
    as_list = run_sweep(model, tokenizer, pairs, intervention, [0.0, 1.0], cache=False, progress=False)
    _close(as_array, as_list, atol=0)


def test_zero_multiplier_equals_no_intervention(big_model, tokenizer, pairs):
    intervention = Intervention.random(big_model, "vector", LAYER, seed=3, gain=4.0)
    at_zero = run_sweep(big_model, tokenizer, pairs, intervention, [0.0], cache=False, progress=False)
    plain = naive_sweep(big_model, tokenizer, pairs, None, [0.0])
    _close(at_zero, plain, atol=1e-5)


def test_summed_loss_is_mean_times_length(big_model, tokenizer, pairs):
    mean = run_sweep(big_model, tokenizer, pairs, None, [0.0], loss="mean", cache=False, progress=False)
    total = run_sweep(big_model, tokenizer, pairs, None, [0.0], loss="sum", cache=False, progress=False)
    lengths = [len(sweep_module.encode_pairs(tokenizer, [p])[0].positive) for p in pairs]
    np.testing.assert_allclose(total.loss_p, mean.loss_p * lengths, rtol=1e-5)


@pytest.mark.parametrize("tokens", ["answer", "completion"])
def test_diffmean_is_the_mean_difference_of_answer_activations(big_model, tokenizer, pairs, tokens):
    """"answer" (the default, as the reference code) averages the answer's own tokens; "completion"
    also the end-of-turn text after them."""
    from splitlib.scoring import end_of_turn

    vector = diffmean(big_model, tokenizer, pairs, LAYER, tokens=tokens)
    end = len(tokenizer(end_of_turn(tokenizer), add_special_tokens=False).input_ids) if tokens == "answer" else 0
    expected = torch.zeros(big_model.config.hidden_size, dtype=torch.float64)
    for pair in pairs:
        sides = []
        for answer in (pair.positive, pair.negative):
            encoded = sweep_module.encode_pairs(tokenizer, [pair])[0]
            ids = torch.tensor([encoded.prompt + (encoded.positive if answer == pair.positive else encoded.negative)])
            with torch.no_grad():
                hidden = big_model(ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
            n = len(encoded.positive if answer == pair.positive else encoded.negative)
            sides.append(hidden[-n : len(hidden) - end].double().mean(dim=0))
        expected += (sides[0] - sides[1]) / len(pairs)
    torch.testing.assert_close(vector.delta_b.detach().double(), expected, rtol=1e-4, atol=1e-5)
    assert vector.form == "vector" and vector.layer == LAYER
    if tokens == "answer":
        assert end > 0  # the end-of-turn text really is left out
    with pytest.raises(ValueError, match="unknown tokens 'eot'"):
        diffmean(big_model, tokenizer, pairs, LAYER, tokens="eot")


# ----- the cache ---------------------------------------------------------------------------------------
def test_a_second_call_returns_the_cached_table(cache_dir, tokenizer, pairs, monkeypatch):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=4, gain=4.0)
    first = run_sweep(model, tokenizer, pairs, intervention, GRID, progress=False)
    monkeypatch.setattr(sweep_module, "sweep_pass", lambda *a, **k: pytest.fail("recomputed a cached sweep"))
    second = run_sweep(model, tokenizer, pairs, intervention, GRID, progress=False)
    pd.testing.assert_frame_equal(first, second)
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == 1


@pytest.mark.parametrize("change", ["intervention", "grid", "pairs", "truncation", "model"])
def test_a_changed_input_is_never_served_a_stale_table(cache_dir, tokenizer, pairs, change):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=5, gain=4.0)
    first = run_sweep(model, tokenizer, pairs, intervention, GRID, progress=False)
    args = dict(model=model, pairs=pairs, intervention=intervention, grid=GRID, max_answer_tokens=None)
    if change == "intervention":
        args["intervention"] = Intervention("vector", LAYER, delta_b=intervention.delta_b.detach() * 1.5)
    elif change == "grid":
        args["grid"] = GRID + [3.0]
    elif change == "pairs":
        args["pairs"] = pairs[:-1] + [PolarityPair("p5", pairs[-1].question, "Green", "Red", "test")]
    elif change == "truncation":
        args["max_answer_tokens"] = 2  # cuts the longer answers: other tokens, another sweep
    else:
        args["model"] = tiny_model("llama", seed=1, vocab_size=49152)
    second = run_sweep(args["model"], tokenizer, args["pairs"], args["intervention"], args["grid"],
                       max_answer_tokens=args["max_answer_tokens"], progress=False)
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == 2
    common = first.merge(second, on=["pair_id", "m"], suffixes=("", "_new"))
    assert not np.allclose(common.loss_p, common.loss_p_new) or len(second) != len(first)


def test_both_loss_kinds_and_a_harmless_truncation_share_one_cached_pass(cache_dir, tokenizer, pairs, monkeypatch):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=5, gain=4.0)
    mean = run_sweep(model, tokenizer, pairs, intervention, GRID, progress=False)
    monkeypatch.setattr(sweep_module, "sweep_pass", lambda *a, **k: pytest.fail("recomputed a cached pass"))
    total = run_sweep(model, tokenizer, pairs, intervention, GRID, loss="sum", max_answer_tokens=1000, progress=False)
    lengths = np.tile([len(sweep_module.encode_pairs(tokenizer, [p])[0].positive) for p in pairs], len(GRID))
    np.testing.assert_allclose(total.loss_p, mean.loss_p * lengths, rtol=1e-12)
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == 1


def test_an_interrupted_sweep_resumes_where_it_stopped(cache_dir, tokenizer, pairs, monkeypatch):
    model = tiny_model("qwen2", vocab_size=49152)
    intervention = Intervention.random(model, "local_weight", LAYER, seed=6, gain=4.0)
    reference = run_sweep(model, tokenizer, pairs, intervention, GRID, settings=TWO_PER_ROW, cache=False,
                          progress=False)
    counting_batches(monkeypatch, dies_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(model, tokenizer, pairs, intervention, GRID, settings=TWO_PER_ROW, progress=False)
    assert not list((cache_dir / "sweeps").glob("*.parquet")), "no table may exist after an interruption"
    calls = counting_batches(monkeypatch)
    resumed = run_sweep(model, tokenizer, pairs, intervention, GRID, settings=TWO_PER_ROW, progress=False)
    assert len(calls) == 2, "the first batch was finished before the interruption and is not recomputed"
    _close(resumed, reference, atol=1e-6)
    assert not list((cache_dir / "sweeps").glob("*.partial"))


def _sweep_in_another_process(cache: str, model_dir: str, queue) -> None:
    import os

    os.environ["SPLITLIB_CACHE"] = cache
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # not from `cache`, which holds no model copy
    model = tiny_model("llama", vocab_size=49152)
    pairs = [PolarityPair(f"p{i}", q, a, b, "test") for i, (q, a, b) in enumerate(QUESTIONS)]
    table = run_sweep(model, tokenizer, pairs, Intervention.random(model, "vector", LAYER, seed=7), GRID,
                      progress=False)
    queue.put(table.loss_p.tolist())


def test_two_processes_computing_the_same_sweep_agree(cache_dir):
    import os

    from splitlib.models import embedded_model_dir

    os.environ.pop("SPLITLIB_CACHE")
    model_dir = str(embedded_model_dir())  # the user's cached copy: the workers' cache is the sweep's alone
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_sweep_in_another_process, args=(str(cache_dir), model_dir, queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results[0] == results[1]
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == 1


# ----- bad input ---------------------------------------------------------------------------------------
def test_bad_sweep_input(tokenizer, pairs):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER)
    with pytest.raises(ValueError, match="unknown loss"):
        run_sweep(model, tokenizer, pairs, intervention, GRID, loss="median", cache=False)
    with pytest.raises(ValueError, match="at least one pair"):
        run_sweep(model, tokenizer, [], intervention, GRID, cache=False)
    with pytest.raises(ValueError, match="at least one multiplier"):
        run_sweep(model, tokenizer, pairs, intervention, [], cache=False)
    with pytest.raises(ValueError, match="repeats a multiplier"):
        run_sweep(model, tokenizer, pairs, intervention, [1.0, 1.0], cache=False)
    with pytest.raises(ValueError, match="finite"):
        run_sweep(model, tokenizer, pairs, intervention, [0.0, float("nan")], cache=False)
    with pytest.raises(ValueError, match="without an intervention"):
        run_sweep(model, tokenizer, pairs, None, [0.0, 5.0], cache=False)
    with pytest.raises(ValueError, match="token_budget"):
        EngineSettings(token_budget=0)
    with pytest.raises(ValueError, match="smaller than one packed row"):
        EngineSettings(token_budget=100, row_tokens=200)
    with pytest.raises(ValueError, match="does not fit the token budget of 16"):
        run_sweep(model, tokenizer, pairs, intervention, GRID, cache=False,
                  settings=EngineSettings(token_budget=16, row_tokens=16))
    with pytest.raises(ValueError, match="out of range"):
        run_sweep(model, tokenizer, pairs, Intervention("vector", 9, delta_b=torch.zeros(32)), GRID, cache=False)


def test_precision_noise_is_zero_in_the_same_precision_and_small_in_bfloat16(cache_dir, tokenizer, pairs):
    from splitlib.sweep import precision_noise

    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=10, gain=4.0)
    same = precision_noise(model, tokenizer, pairs, intervention, [0.0, 1.0], dtype=torch.float32)
    assert (same.drop(columns="m").to_numpy() == 0).all()
    noise = precision_noise(model, tokenizer, pairs, intervention, [0.0, 1.0])
    assert list(noise.m) == [0.0, 1.0]
    assert (noise.largest_pref_odds > 0).any() and (noise.largest_pref_odds < 1.0).all()
    assert (noise.mean_pref_odds <= noise.largest_pref_odds).all()
