"""Packed-tree attention masks in the form each transformers attention implementation takes.

The engine packs many polarity pairs into one row as a tree (shared prompt prefix, per-pair prompt
rest, A_p and A_n as branches) described by `allowed` (rows, 1, width, width): query q may attend
key k. What transformers 5.24 does with a prepared 4-D mask (masking_utils.py; Llama, Qwen2 and
Gemma-2 modeling files):

- `create_causal_mask` / `create_sliding_window_causal_mask` return any 4-D tensor or BlockMask
  untouched (`_preprocess_mask_arguments`), whatever the implementation. Gemma-2's sliding layers
  thus get the same mask as its global ones: the window is not applied, which is exact while no
  packed sequence is longer than `config.sliding_window` (4096 for Gemma-2; rows hold <= 2048).
- eager adds the mask to the (soft-capped) scores: it needs an additive float mask (a bool mask
  would be added as 1/0 and mask nothing).
- sdpa hands the mask to `scaled_dot_product_attention`, which reads bool as "may attend". It
  raises on a `softcap` (Gemma-2 also declares `_supports_sdpa = False`).
- flex_attention passes a BlockMask through as `block_mask`, and applies Gemma-2's
  `attn_logit_softcapping` in its score_mod (softcap * tanh(score / softcap)): soft-capping is kept.
  A tensor mask, though, is *added* to the score in score_mod (`score + mask[b][0][q][kv]`) with no
  block skipped: a bool mask adds 1 or 0 and masks nothing (gpu.md's 6.1 error; reproduced here),
  a float mask is exact in float32 (verified) and gpu.md's 0.2 is bf16 rounding (here in bf16 eager
  and flex differ by 1 ulp of the hidden state, either way) but it is read in full. Hence the BlockMask.

Verified on CPU in float32 (tests/test_attention.py, tiny Llama/Qwen2/Gemma-2 with active
soft-capping): every path below gives the hidden states of each sequence run alone to ~1e-6.
On CPU transformers always runs flex_attention through torch.compile (inductor, C++ compiler):
it works and is exact, but compiles ~5-25 s per shape, and in torch 2.13 the CPU kernel fails to
build (CppCompileError) when dynamo recompiles it for dynamic shapes (a second shape); with
`torch._dynamo.config.automatic_dynamic_shapes = False` it works. So on a CPU use eager or sdpa.

On a GPU (recommended from exactness, speed not measured here): Llama / Qwen2: sdpa with the bool
mask (exact, no compiling). Gemma-2 cannot use sdpa: flex_attention with the BlockMask (exact, keeps
the cap, skips 128x128 blocks with nothing allowed; compiles per new shape, so pad row widths to a
few fixed sizes), with eager + float mask (exact, the reference) as the fallback.
flash_attention_2 takes no 4-D mask and cannot run packed rows.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

PACKABLE = ("eager", "sdpa", "flex_attention")
BLOCK = 128  # FlexAttention's sparse block size (create_block_mask's default)


def attention_implementation(model: nn.Module) -> str:
    """The model's attention implementation, or a ValueError if packed tree rows cannot use it."""
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation not in PACKABLE:
        raise ValueError(
            f"attention implementation {implementation!r} cannot run packed rows (it takes no 4-D attention mask); "
            f"packing supports {', '.join(PACKABLE)}"
        )
    if implementation == "sdpa" and getattr(model.config, "attn_logit_softcapping", None):
        raise ValueError(
            "attention implementation 'sdpa' cannot apply attn_logit_softcapping; "
            f"use eager or flex_attention (packing supports {', '.join(PACKABLE)})"
        )
    return implementation


def packed_attention_mask(model: nn.Module, allowed: Tensor, dtype: torch.dtype) -> Tensor | BlockMask:
    """The `attention_mask` the model's implementation takes for rows whose permissions are `allowed`."""
    if allowed.dtype != torch.bool or allowed.dim() != 4 or allowed.shape[1] != 1:
        raise ValueError(f"allowed must be bool (rows, 1, width, width), got {allowed.dtype} {tuple(allowed.shape)}")
    implementation = attention_implementation(model)
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        return _additive(allowed, dtype)
    return _block_mask(allowed)


def _same_rows(allowed: Tensor) -> bool:
    """Whether every row equals the first (as when one packed row is repeated per multiplier)."""
    return allowed.shape[0] == 1 or allowed.stride(0) == 0 or torch.equal(allowed, allowed[:1].expand_as(allowed))


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where allowed, the dtype's minimum elsewhere; repeated rows share one copy (expand)."""
    first = allowed[:1] if _same_rows(allowed) else allowed
    mask = torch.zeros(first.shape, dtype=dtype, device=allowed.device).masked_fill_(~first, torch.finfo(dtype).min)
    return mask.expand(allowed.shape)


def _block_mask(allowed: Tensor) -> BlockMask:
    """A FlexAttention BlockMask for `allowed`; blocks with no allowed pair are skipped by the kernel.

    The mask_mod reads the dense permissions, padded to whole blocks so that the kernel cannot index
    out of bounds in a row's last, partial block. Identical rows (one packed row repeated per
    multiplier) give a batch-1 BlockMask and a mask_mod that ignores the row: flex_attention
    broadcasts it over the batch (verified, compiled and not).
    """
    rows, _, q_len, kv_len = allowed.shape
    same = _same_rows(allowed)
    dense = (allowed[:1] if same else allowed)[:, 0]
    dense = torch.nn.functional.pad(dense, (0, -kv_len % BLOCK, 0, -q_len % BLOCK), value=False)

    def same_rows_mask(_b: Tensor, _h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return dense[0, q, kv]

    def per_row_mask(b: Tensor, _h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return dense[b, q, kv]

    mask_mod = same_rows_mask if same else per_row_mask
    batch = 1 if same else rows
    return create_block_mask(mask_mod, batch, None, q_len, kv_len, device=allowed.device, BLOCK_SIZE=BLOCK)
