"""Packed-tree rows give, under every packable attention implementation, the hidden states of each
sequence run alone; Gemma-2's attention soft-capping stays exact."""
from __future__ import annotations

import inspect
import shutil

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
import transformers.integrations.flex_attention as hf_flex
from conftest import tiny_model
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from splitlib.attention import PACKABLE, attention_implementation, packed_attention_mask

try:  # the engine module (the sweep re-exports these)
    from splitlib.engine import collate_pairs, encode_pairs
except ImportError:
    from splitlib.sweep import collate_pairs, encode_pairs

TOLERANCE = 1e-4
CAP = 1.0  # Gemma-2's attention soft-cap in these tests: small, so that capping changes the numbers
REPEATS = 3  # copies of a batch's rows, as the engine makes one per multiplier


def packable_model(arch: str, implementation: str = "eager") -> torch.nn.Module:
    """A tiny float32 model with the real vocabulary; Gemma-2's scores made large enough that the cap acts."""
    model = tiny_model(arch, vocab_size=49152)
    if arch == "gemma2":
        with torch.no_grad():
            for layer in model.model.layers:  # scores scale by 64: well beyond the cap
                layer.self_attn.q_proj.weight.mul_(8.0)
                layer.self_attn.k_proj.weight.mul_(8.0)
        set_softcap(model, CAP)
    model.set_attn_implementation(implementation)
    return model


def set_softcap(model: torch.nn.Module, cap: float | None) -> None:
    model.config.attn_logit_softcapping = cap
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = cap  # read from the config at init


@pytest.fixture
def reference_flex(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' flex_attention path on torch's uncompiled reference flex_attention (no dynamo, no
    inductor: milliseconds on CPU instead of ~5-25 s of compiling per shape; the same numbers)."""
    def uncompiled(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", uncompiled)
    monkeypatch.setattr(flex_module, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)  # forward only: exact


def packed(encoded, model, row_per_pair: bool = False, head_only: bool = False):
    """A packed batch and its permission matrix `allowed` (rows, 1, width, width)."""
    if "model" in inspect.signature(collate_pairs).parameters:  # the engine's: the batch keeps `allowed`
        batch = collate_pairs(encoded, 0, "cpu", packed=True, model=model, row_per_pair=row_per_pair,
                              share_unsteered_only=head_only)
        return batch, batch.allowed
    batch = collate_pairs(encoded, 0, torch.device("cpu"), packed=True, mask_format="bool", row_per_pair=row_per_pair)
    return batch, batch.attention_mask


def hidden(model, input_ids, position_ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state


def alone(model, encoded) -> torch.Tensor:
    """Final hidden states at the scored positions, each sequence run on its own (eager, no mask)."""
    model.set_attn_implementation("eager")
    batch = collate_pairs(encoded, 0, torch.device("cpu"), packed=False)
    out = []
    for r, n in enumerate(batch.attention_mask.sum(-1).tolist()):
        states = hidden(model, batch.input_ids[r : r + 1, :n], None, None)[0]
        out.append(states[batch.cols[batch.rows == r]])
    return torch.cat(out)


def implementations(arch: str) -> list[str]:
    return [i for i in PACKABLE if not (arch == "gemma2" and i == "sdpa")]  # sdpa cannot soft-cap


@pytest.mark.parametrize(("row_per_pair", "head_only"), [(False, False), (True, False), (False, True)],
                         ids=["one-row", "row-per-pair", "head-shared"])
def test_packed_rows_equal_each_sequence_alone(arch, tokenizer, pairs, reference_flex, row_per_pair, head_only):
    model = packable_model(arch)
    encoded = encode_pairs(tokenizer, pairs)
    expected = alone(model, encoded)
    batch, allowed = packed(encoded, model, row_per_pair, head_only)
    for implementation in implementations(arch):
        model.set_attn_implementation(implementation)
        assert attention_implementation(model) == implementation
        mask = packed_attention_mask(model, allowed, torch.float32)
        states = hidden(model, batch.input_ids, batch.position_ids, mask)[batch.rows, batch.cols]
        assert (states - expected).abs().max() <= TOLERANCE, implementation


def test_mask_forms(tokenizer, pairs):
    model = packable_model("llama")
    _, allowed = packed(encode_pairs(tokenizer, pairs), model)
    model.set_attn_implementation("sdpa")
    assert torch.equal(packed_attention_mask(model, allowed, torch.float32), allowed)
    model.set_attn_implementation("eager")
    additive = packed_attention_mask(model, allowed, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and additive.shape == allowed.shape
    assert torch.equal(additive == 0, allowed) and torch.all(additive[~allowed] == torch.finfo(torch.bfloat16).min)
    model.set_attn_implementation("flex_attention")
    block = packed_attention_mask(model, allowed, torch.float32)
    assert isinstance(block, BlockMask) and block.shape == allowed.shape
    # Which 128x128 blocks are computed: exactly those holding an allowed pair (the rest are skipped).
    width = allowed.shape[-1]
    pad = -width % 128
    blocks = torch.nn.functional.pad(allowed, (0, pad, 0, pad)).unflatten(2, (-1, 128)).unflatten(4, (-1, 128))
    assert width > 128 and torch.equal(block.to_dense().bool(), blocks.any(dim=(3, 5)))
    assert not blocks.any(dim=(3, 5)).all()  # causal: the upper-right block is skipped


@pytest.mark.parametrize("row_per_pair", [False, True], ids=["one-row", "row-per-pair"])
def test_repeated_rows(arch, tokenizer, pairs, reference_flex, row_per_pair):
    model = packable_model(arch)
    batch, allowed = packed(encode_pairs(tokenizer, pairs), model, row_per_pair)
    ids, positions = batch.input_ids.repeat(REPEATS, 1), batch.position_ids.repeat(REPEATS, 1)
    copies = [allowed.repeat(REPEATS, 1, 1, 1)]
    if allowed.shape[0] == 1:
        copies.append(allowed.expand(REPEATS, -1, -1, -1))
    for implementation in implementations(arch):
        model.set_attn_implementation(implementation)
        once = hidden(model, batch.input_ids, batch.position_ids, packed_attention_mask(model, allowed, torch.float32))
        for repeated in copies:
            mask = packed_attention_mask(model, repeated, torch.float32)
            if implementation == "flex_attention" and allowed.shape[0] == 1:
                assert mask.shape[0] == 1  # identical rows share one batch-1 BlockMask (broadcast)
            states = hidden(model, ids, positions, mask)
            assert (states - once.repeat(REPEATS, 1, 1)).abs().max() <= TOLERANCE, implementation


def test_soft_capping_is_active_and_kept(tokenizer, pairs, reference_flex):
    """Dropping Gemma-2's attention cap moves the hidden states far beyond the tolerance; eager and
    flex_attention keep it."""
    model = packable_model("gemma2")
    encoded = encode_pairs(tokenizer, pairs)
    capped = alone(model, encoded)
    set_softcap(model, None)
    assert (alone(model, encoded) - capped).abs().max() > 100 * TOLERANCE
    set_softcap(model, CAP)
    batch, allowed = packed(encoded, model)
    for implementation in ("eager", "flex_attention"):
        model.set_attn_implementation(implementation)
        mask = packed_attention_mask(model, allowed, torch.float32)
        states = hidden(model, batch.input_ids, batch.position_ids, mask)
        assert (states[batch.rows, batch.cols] - capped).abs().max() <= TOLERANCE, implementation


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler")
def test_compiled_flex_attention_on_cpu(tokenizer, pairs):
    """transformers' real (torch.compile'd) flex path on CPU: Gemma-2, copies of one row, batch-1 BlockMask.

    The one slow test (~5 s with inductor's cache warm, ~25 s cold). Static shapes: in torch 2.13
    the CPU inductor kernel of flex_attention fails to build (CppCompileError, undeclared
    `cur_kvSplitSize5`) when a second shape makes dynamo recompile it with dynamic shapes.
    """
    model = packable_model("gemma2")
    encoded = encode_pairs(tokenizer, pairs)
    expected = alone(model, encoded)
    batch, allowed = packed(encoded, model)
    model.set_attn_implementation("flex_attention")
    mask = packed_attention_mask(model, allowed.expand(REPEATS, -1, -1, -1), torch.float32)  # batch-1 BlockMask
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        states = hidden(model, batch.input_ids.repeat(REPEATS, 1), batch.position_ids.repeat(REPEATS, 1), mask)
    for copy in states.chunk(REPEATS):
        assert (copy[batch.rows, batch.cols] - expected).abs().max() <= TOLERANCE


def test_implementations_that_cannot_pack_are_refused():
    model = tiny_model("llama")
    model.config._attn_implementation = "flash_attention_2"  # only named: flash-attn is not loaded
    allowed = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    calls = (lambda: attention_implementation(model), lambda: packed_attention_mask(model, allowed, torch.float32))
    for call in calls:
        with pytest.raises(ValueError, match="flash_attention_2.*eager, sdpa, flex_attention"):
            call()
    gemma = tiny_model("gemma2")  # sdpa would drop attn_logit_softcapping (transformers refuses it for Gemma-2)
    gemma.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="softcapping"):
        attention_implementation(gemma)
    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="bool"):
        packed_attention_mask(model, allowed.float(), torch.float32)


def test_training_rows_share_only_the_template_head_and_mark_where_the_update_acts(tokenizer, pairs):
    encoded = encode_pairs(tokenizer, pairs)
    head = encoded[0].unsteered
    assert head > 0 and all(pair.unsteered == head for pair in encoded)
    model = packable_model("llama")
    shared, _ = packed(encoded, model)  # sweeps share the whole common prompt prefix
    training, _ = packed(encoded, model, head_only=True)
    sizes = [len(p.prompt) + len(p.positive) + len(p.negative) for p in encoded]
    assert int(training.real.sum()) == head + sum(size - head for size in sizes) >= int(shared.real.sum())
    for batch in (shared, training):
        assert torch.equal(batch.steered, (batch.position_ids >= head) & batch.real)
    # each token's source is its own place in the pairs laid end to end
    flat = torch.tensor([t for p in encoded for t in p.prompt + p.positive + p.negative])
    assert torch.equal(flat[training.source][training.real], training.input_ids[training.real])
