"""The benchmarks' FLOP accounting against hand counts, and the benchmarks run end to end on a tiny model."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import tiny_model

from splitlib import bench
from splitlib.bench import ModelCounts, TokenCounts, pair_tokens, sweep_flops, train_flops, tree_tokens
from splitlib.models import decoder_layers
from splitlib.scoring import EncodedPair


def test_model_counts_are_the_layers_parameters(model, arch):
    counts = ModelCounts.of(model)
    layers = decoder_layers(model)
    assert counts.layer_params == tuple(sum(p.numel() for p in layer.parameters()) for layer in layers)
    assert counts.n_layers == 4
    assert counts.final_norm_params == 32  # one weight per hidden unit
    assert (counts.hidden_size, counts.vocab_size, counts.attention_width) == (32, 97, 32)
    # By hand for the tiny shape: q, o 32x32; k, v 32x16 (2 KV heads of 8); gate, up, down 32x48.
    norms = {"llama": 2, "qwen2": 2, "gemma2": 4}[arch] * 32
    biases = 32 + 16 + 16 if arch == "qwen2" else 0  # Qwen-2 has biases on q, k and v
    assert counts.layer_params[0] == 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 48 + norms + biases
    embedding = sum(p.numel() for p in model.parameters()) - sum(counts.layer_params) - counts.final_norm_params
    tied = model.config.tie_word_embeddings
    assert embedding == 97 * 32 * (1 if tied else 2)  # the embedding, and the LM head unless tied to it


def test_tree_tokens_by_hand():
    pairs = [
        EncodedPair((1, 2, 3, 4), (7, 8), (9,)),
        EncodedPair((1, 2, 5), (7,), (8, 9, 10)),
        EncodedPair((1, 2, 3, 4), (6,), (6,)),  # the same prompt again: nothing new in the tree
    ]
    counts = tree_tokens(pairs)
    # Tree: 1 2 3 4 and the branch 5 below 1 2 (5 nodes); answers 2+1, 1+3, 1+1 tokens.
    assert counts.tokens == 5 + 3 + 4 + 2
    assert counts.scored == 3 + 4 + 2
    assert counts.unshared == (4 + 3) + (3 + 4) + (4 + 2)
    # Keys attended (depth + 1): prompt nodes 1+2+3+4 and 3 (the 5); each answer continues its prompt.
    prompt_keys = 1 + 2 + 3 + 4 + 3
    answer_keys = (5 + 6) + 5 + 4 + (4 + 5 + 6) + 5 + 5
    assert counts.keys == prompt_keys + answer_keys
    # Every pair a tree of its own: each prompt counted once per pair.
    alone = pair_tokens(pairs)
    assert alone.tokens == alone.unshared == counts.unshared
    assert alone.keys == (1 + 2 + 3 + 4) * 2 + (1 + 2 + 3) + answer_keys


def test_sweep_and_train_flops_by_hand():
    counts = ModelCounts(layer_params=(10, 20, 30, 40), final_norm_params=5, hidden_size=8, vocab_size=100,
                         attention_width=6)
    tokens = TokenCounts(tokens=7, scored=3, keys=20, unshared=9)
    flops = sweep_flops(counts, layer=2, tokens=tokens, n_multipliers=4)
    assert flops["lower"] == 2 * (10 + 20 + 30) * 7  # layers 0..L once: L's steered output needs no rerun
    assert flops["upper"] == 2 * (40 + 5) * 7 * 4
    assert flops["head"] == 2 * 8 * 100 * 3 * 4
    assert flops["attention"] == 4 * 6 * 20 * (3 + 1 * 4)
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
    step = train_flops(counts, layer=1, tokens=tokens)
    forward = 2 * (30 + 40 + 5) * 7 + 2 * 8 * 100 * 3
    attention = 4 * 6 * 20 * 2
    assert step["forward"] == forward + attention
    assert step["total"] == 2 * forward + 3 * attention
    with pytest.raises(ValueError, match="layer 4 is out of range 0..3"):
        sweep_flops(counts, 4, tokens, 1)


def test_the_formula_matches_torchs_flop_counter():
    """A whole forward (layer 0, one multiplier) over one sequence: torch counts every matmul; eager
    attention computes the full square of scores, so give the formula T^2 keys. What torch does not
    count is the norms, which the formula includes as parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model("llama")
    model.config._attn_implementation = "eager"
    length = 9
    ids = torch.arange(1, length + 1).view(1, -1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    counts = ModelCounts.of(model)
    ours = sweep_flops(counts, 0, TokenCounts(length, length, length * length, length), 1)["total"]
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert ours - counter.get_total_flops() == 2 * norms * length


def test_synthetic_answers_have_exactly_the_asked_tokens(tokenizer):
    from splitlib.scoring import encode_pair, end_of_turn

    pairs = bench.synthetic_pairs(tokenizer, 5, 128)
    assert pairs == bench.synthetic_pairs(tokenizer, 5, 128)  # deterministic
    assert len({p.question for p in pairs}) == 5 and all(p.positive != p.negative for p in pairs)
    suffix = len(tokenizer(end_of_turn(tokenizer), add_special_tokens=False).input_ids)
    for pair in pairs:
        encoded = encode_pair(tokenizer, pair.question, pair.positive, pair.negative)
        assert len(encoded.positive) == len(encoded.negative) == 128 + suffix
    with pytest.raises(ValueError, match="at least one token"):
        bench.synthetic_pairs(tokenizer, 1, 0)


def test_a_cuda_profile_without_cuda_stops_with_a_message():
    from splitlib.profiles import PROFILES

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="has no CUDA device; pass --device cpu"):
        bench.resolve_device(PROFILES["gemma-2-9b-it"], None)
    assert bench.resolve_device(PROFILES["gemma-2-9b-it"], "cpu") == "cpu"


def test_the_peak_matmul_is_timed():
    peak = bench.matmul_peak("cpu", "float32", size=128, repeats=2)
    assert peak["peak_flops_per_s"] > 0 and peak["peak_matmul"].startswith("128x128 @ 128x128 float32")


@pytest.fixture
def tiny_bench(monkeypatch, tokenizer):
    """The benchmarks on a 4-layer model with the embedded tokenizer, at layer 2."""
    import splitlib.profiles as profiles

    small = replace(profiles.PROFILES["cpu"], layer=2)
    monkeypatch.setattr(profiles, "get_profile", lambda name=None: small)
    monkeypatch.setattr(bench, "_load", lambda profile, random_weights, device: (
        tiny_model("llama", vocab_size=49152), tokenizer))


def test_bench_sweep_runs_end_to_end(tiny_bench, capsys):
    bench.main(["sweep", "--pairs", "3", "--multipliers", "2", "--answer-tokens", "4", "--naive-pairs", "2",
                "--attention", "sdpa", "--token-budget", "4096"])
    result = json.loads(capsys.readouterr().out)
    assert (result["pairs"], result["multipliers"], result["naive_pairs"]) == (3, 2, 2)
    assert result["token_budget"] == 4096
    assert result["max_abs_diff"] < 1e-3
    assert result["device"].startswith("cpu") and result["dtype"] == "float32"
    assert result["tokens"] < result["tokens_unshared"] and result["scored_tokens"] > 0
    assert result["ideal_flops"] == sum(result["ideal_flops_parts"].values())
    assert 0 < result["share_of_peak"] and result["peak_memory_of"] == "ru_maxrss"
    for key in ("naive_s", "engine_s", "speedup", "achieved_flops_per_s", "peak_flops_per_s", "loss_median"):
        assert result[key] > 0


def test_bench_train_runs_end_to_end(tiny_bench, capsys):
    bench.main(["train", "--pairs", "8", "--steps", "2", "--answer-tokens", "3", "--form", "vector"])
    result = json.loads(capsys.readouterr().out)
    assert (result["form"], result["method"], result["steps"], result["pairs"]) == ("vector", "split", 2, 8)
    assert result["tokens_exact"] is True
    assert result["tokens"] > 0 and result["ideal_flops"] > 0
    for key in ("whole_model_s", "reused_s", "speedup", "share_of_peak_reused", "share_of_peak_whole_model"):
        assert result[key] > 0


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["sweep", "--pairs", "0"])
    assert "--pairs must be at least 1" in capsys.readouterr().err


def test_an_unknown_attention_or_a_budget_below_one_row_is_named():
    with pytest.raises(SystemExit, match="--attention 'flash_attention_2' cannot run packed rows"):
        bench.bench_profile("cpu", attention="flash_attention_2")
    with pytest.raises(SystemExit, match=r"--token-budget: .*token_budget \(100\) is smaller than one packed row"):
        bench.bench_profile("cpu", token_budget=100)
    assert bench.bench_profile("cpu", "eager", 4096).attn_implementation == "eager"
