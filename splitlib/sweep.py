"""The m-sweep engine: every pair of a split, every multiplier of a grid, one intervention.

Layers below the intervention layer do not depend on m, so each batch runs them once and keeps the
hidden state that enters layer L; only layers L..end run again per multiplier. Logits are computed
only at the positions that predict a scored completion token. The result is one tidy table,
cached as parquet under a key of everything that determines it; an interrupted sweep resumes from
its last finished batch.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .cache import cache_root, file_lock, source_digest, stable_hash
from .data import PolarityPair
from .interventions import Intervention
from .models import decoder_layers, model_fingerprint
from .scoring import EncodedPair, check_loss, encode_pair, pref_odds, reduce_nll, token_nll, util_odds

ENGINE_VERSION = 1  # bump when the engine's numbers would change
COLUMNS = ["pair_id", "split", "m", "loss_pos", "loss_neg", "pref_odds", "util_odds", "clamped"]


# ----- running part of the layer stack ----------------------------------------------------------------
class _PassThrough(nn.Module):
    """Stands in for a decoder layer that must not compute: returns its input hidden state."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.attention_type = getattr(original, "attention_type", None)  # read by some model loops

    def forward(self, hidden_states: Tensor, *args: object, **kwargs: object) -> Tensor:
        return hidden_states


@dataclass
class _Window:
    entering_stop: Tensor | None = None  # the hidden state entering layer `stop`


@contextmanager
def layer_window(model: nn.Module, start: int, stop: int, inject: Tensor | None = None) -> Iterator[_Window]:
    """Within the block only decoder layers start..stop-1 compute; the others pass their input on.

    `inject` replaces the hidden state entering layer `start`; the hidden state entering layer
    `stop` (if stop < n_layers) is captured. Embeddings, masks and positions are the model's own.
    """
    layers = decoder_layers(model)
    originals = list(layers)
    window = _Window()

    def replace(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        return (inject.to(args[0].dtype),) + args[1:], kwargs

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        window.entering_stop = args[0]

    hooks = []
    try:
        for index, layer in enumerate(originals):
            if not start <= index < stop:
                layers[index] = _PassThrough(layer)
        if inject is not None:  # past the last layer, the final norm is what receives the hidden state
            target = layers[start] if start < len(layers) else model.get_decoder().norm
            hooks.append(target.register_forward_pre_hook(replace, with_kwargs=True))
        if stop < len(layers):
            hooks.append(layers[stop].register_forward_pre_hook(capture, with_kwargs=True))
        yield window
    finally:
        for hook in hooks:
            hook.remove()
        for index, layer in enumerate(originals):
            layers[index] = layer


def lm_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """The LM head on selected final hidden states (with Gemma-2's final soft-capping)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


# ----- batches ---------------------------------------------------------------------------------------
@dataclass
class PairBatch:
    input_ids: Tensor
    attention_mask: Tensor  # 2-D padding mask, or a prepared 4-D mask for packed pairs
    position_ids: Tensor
    rows: Tensor  # batch row of each scored token, sequence after sequence (A_p, A_n per pair)
    cols: Tensor  # position whose logits predict that token
    targets: Tensor
    lengths: list[int]  # scored tokens per sequence
    own_cols: Tensor  # position of each scored token itself


def encode_pairs(tokenizer: object, pairs: Sequence[PolarityPair], max_answer_tokens: int | None = None) -> list[EncodedPair]:
    return [encode_pair(tokenizer, p.question, p.positive, p.negative, max_answer_tokens) for p in pairs]


def collate_pairs(encoded: Sequence[EncodedPair], pad_id: int, device: torch.device, packed: bool,
             mask_format: str = "bool", dtype: torch.dtype = torch.float32, row_per_pair: bool = False) -> PairBatch:
    """The sequences of a batch of pairs as padded rows, with where each scored token sits.

    Separate (`packed=False`): two rows per pair, prompt + A_p and prompt + A_n, right-padded.
    Packed: all pairs of the batch in one row laid out as a tree: the prompts' common prefix, then
    per pair the rest of its prompt, A_p and A_n. A 4-D mask lets each token see only its own
    branch (A_n never sees A_p, pair i never sees pair j) and positions restart where each branch
    starts, so every answer is scored exactly as if it were alone, while the shared prefix and each
    prompt are computed once. `row_per_pair` packs each pair in a row of its own (training draws
    one m per pair, applied per row).
    """
    if not packed:
        rows = [_tree_row([pair], only=side) for pair in encoded for side in (0, 1)]
    else:
        rows = [_tree_row([pair]) for pair in encoded] if row_per_pair else [_tree_row(encoded)]
    width = max(len(row.tokens) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    scored_rows, cols, own, targets, lengths = [], [], [], [], []
    for r, row in enumerate(rows):
        n = len(row.tokens)
        ids[r, :n] = torch.tensor(row.tokens)
        positions[r, :n] = torch.tensor(row.positions)
        real[r, :n] = True
        for first, count, predictor in row.answers:
            scored_rows += [r] * count
            cols += [predictor] + list(range(first, first + count - 1))
            own += list(range(first, first + count))
            targets += list(row.tokens[first : first + count])
            lengths.append(count)
    if packed:
        attention = _tree_mask(rows, width, real, mask_format, dtype)
    else:
        attention = real.long()
    to = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return PairBatch(ids.to(device), attention.to(device), positions.to(device), to(scored_rows), to(cols),
                  to(targets), lengths, to(own))


@dataclass
class _Row:
    tokens: list[int]
    positions: list[int]
    segment: list[int]  # segment id of each token
    parent: list[int]  # parent segment of each segment (-1 for the root)
    answers: list[tuple[int, int, int]]  # (first token index, count, index of the token predicting the first)


def _tree_row(pairs: Sequence[EncodedPair], only: int | None = None) -> _Row:
    """One row: common prompt prefix, then per pair its prompt rest, A_p and A_n (or only one answer)."""
    prefix = _common_prefix([p.prompt for p in pairs])
    row = _Row(list(prefix), list(range(len(prefix))), [0] * len(prefix), [-1], [])
    for pair in pairs:
        rest = pair.prompt[len(prefix) :]
        branch = 0
        if rest:
            branch = _add_segment(row, rest, parent=0, start_position=len(prefix))
        answers = (pair.positive, pair.negative) if only is None else ((pair.positive, pair.negative)[only],)
        predictor = _last_token_of(row, branch)
        for answer in answers:
            segment = _add_segment(row, answer, parent=branch, start_position=len(pair.prompt))
            row.answers.append((row.segment.index(segment), len(answer), predictor))
    return row


def _add_segment(row: _Row, tokens: Sequence[int], parent: int, start_position: int) -> int:
    segment = len(row.parent)
    row.parent.append(parent)
    row.tokens += tokens
    row.positions += range(start_position, start_position + len(tokens))
    row.segment += [segment] * len(tokens)
    return segment


def _last_token_of(row: _Row, segment: int) -> int:
    while True:
        indices = [i for i, s in enumerate(row.segment) if s == segment]
        if indices:
            return indices[-1]
        segment = row.parent[segment]


def _common_prefix(sequences: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest common prefix, kept one token short of the shortest prompt so every pair keeps
    at least its last prompt token in its own branch (which predicts the answers)."""
    shortest = min(len(s) for s in sequences)
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return tuple(sequences[0][:n])


def _tree_mask(rows: Sequence[_Row], width: int, real: Tensor, mask_format: str, dtype: torch.dtype) -> Tensor:
    """Token q may attend to token k if k's segment is q's own (and k <= q) or an ancestor of q's."""
    allowed = torch.zeros(len(rows), width, width, dtype=torch.bool)
    for r, row in enumerate(rows):
        n_segments = len(row.parent)
        ancestor = torch.eye(n_segments, dtype=torch.bool)  # ancestor[a, b]: b is a or an ancestor of a
        for a in range(n_segments):
            b = row.parent[a]
            while b >= 0:
                ancestor[a, b] = True
                b = row.parent[b]
        segment = torch.tensor(row.segment)
        n = len(row.tokens)
        allowed[r, :n, :n] = ancestor[segment[:, None], segment[None, :]] & torch.ones(n, n, dtype=torch.bool).tril()
    allowed |= torch.eye(width, dtype=torch.bool)  # padded tokens see themselves: no all-masked softmax
    allowed = allowed[:, None]
    if mask_format == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def packed_mask_format(model: nn.Module) -> str | None:
    """How this model's attention wants a prepared 4-D mask, or None if packing is not supported."""
    implementation = getattr(model.config, "_attn_implementation", "eager")
    return {"sdpa": "bool", "eager": "float"}.get(implementation)


def _batches(encoded: Sequence[EncodedPair], pairs_per_batch: int, max_tokens: int = 2048) -> list[list[int]]:
    """Pair indices per batch; prompts sorted so that a batch shares a long common prefix, and a
    packed row kept under `max_tokens` (attention over a row grows with its square)."""
    order = sorted(range(len(encoded)), key=lambda i: (encoded[i].prompt, i))
    batches: list[list[int]] = []
    tokens = 0
    for i in order:
        size = len(encoded[i].prompt) + len(encoded[i].positive) + len(encoded[i].negative)
        if not batches or len(batches[-1]) >= max(1, pairs_per_batch) or tokens + size > max_tokens:
            batches.append([])
            tokens = 0
        batches[-1].append(i)
        tokens += size
    return batches


def decoder_forward(model: nn.Module, batch: PairBatch) -> Tensor:
    """The decoder's final hidden states (after its final norm) for a batch."""
    return model.get_decoder()(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state


def _losses_per_multiplier(
    model: nn.Module, batch: PairBatch, intervention: Intervention | None, multipliers: Sequence[float], loss: str
) -> np.ndarray:
    """(len(multipliers), n_sequences) losses; lower layers run once for all multipliers."""
    n_layers = len(decoder_layers(model))
    start = intervention.layer if intervention is not None else n_layers
    with torch.no_grad():
        with layer_window(model, 0, start) as window:
            lower = decoder_forward(model, batch)
        entering = window.entering_stop if start < n_layers else None
        out = np.empty((len(multipliers), len(batch.lengths)))
        for k, m in enumerate(multipliers):
            if intervention is None:
                hidden = lower  # nothing depends on m: the full forward above is the answer
            else:
                with layer_window(model, start, n_layers, inject=entering), intervention.apply(model, m):
                    hidden = decoder_forward(model, batch)
            nll = token_nll(lm_logits(model, hidden[batch.rows, batch.cols]), batch.targets)
            out[k] = reduce_nll(nll, batch.lengths, loss).cpu().numpy()
    return out


def _table(pairs: Sequence[PolarityPair], split: str, multipliers: Sequence[float], losses: np.ndarray) -> pd.DataFrame:
    """Tidy rows from (n_multipliers, 2 * n_pairs) losses laid out A_p, A_n per pair."""
    loss_pos, loss_neg = losses[:, 0::2], losses[:, 1::2]
    util, clamped = util_odds(loss_pos, loss_neg)
    grid = np.repeat(np.asarray(multipliers, dtype=float), len(pairs))
    return pd.DataFrame(
        {
            "pair_id": np.tile([p.id for p in pairs], len(multipliers)),
            "split": split,
            "m": grid,
            "loss_pos": loss_pos.reshape(-1),
            "loss_neg": loss_neg.reshape(-1),
            "pref_odds": pref_odds(loss_pos, loss_neg).reshape(-1),
            "util_odds": util.reshape(-1),
            "clamped": clamped.reshape(-1),
        }
    )[COLUMNS]


# ----- the public engine ------------------------------------------------------------------------------
def sweep_key(model: nn.Module, pairs: Sequence[PolarityPair], intervention: Intervention | None,
              multipliers: Sequence[float], split: str, loss: str, max_answer_tokens: int | None, batch_size: int) -> str:
    """Everything that determines a sweep's table."""
    return stable_hash({
        "engine": ENGINE_VERSION,
        "code": source_digest("sweep", "scoring", "interventions", "models"),
        "model": model_fingerprint(model),
        "intervention": intervention_digest(intervention),
        "pairs": [(p.id, p.question, p.positive, p.negative) for p in pairs],
        "multipliers": [float(m) for m in multipliers],
        "split": split, "loss": loss, "max_answer_tokens": max_answer_tokens, "batch_size": batch_size,
    }, length=24)


def intervention_digest(intervention: Intervention | None) -> str:
    """A hash of an intervention's form, layer and exact parameter values."""
    if intervention is None:
        return "none"
    import hashlib

    digest = hashlib.sha256(f"{intervention.form}:{intervention.layer}".encode())
    for name, tensor in sorted(intervention.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_sweep(
    model: nn.Module,
    tokenizer: object,
    pairs: Sequence[PolarityPair],
    intervention: Intervention | None,
    multipliers: Sequence[float],
    *,
    split: str = "test",
    loss: str = "mean",
    max_answer_tokens: int | None = None,
    batch_size: int = 16,  # pairs per forward pass
    cache: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every pair at every multiplier: one row per (pair, m) with L_p, L_n, PrefOdds,
    UtilOdds and whether the utility probability sum was clamped.

    With `cache`, the table is stored as parquet under a key of all inputs; a second call returns
    it, an interrupted call resumes from the last finished batch, and concurrent callers wait for
    one another instead of both computing.
    """
    check_loss(loss)
    if not pairs:
        raise ValueError("sweep needs at least one pair")
    if not multipliers:
        raise ValueError("sweep needs at least one multiplier")
    if intervention is not None:
        intervention.check_fits(model)
    if not cache:
        return _compute(model, tokenizer, pairs, intervention, multipliers, split, loss, max_answer_tokens,
                        batch_size, progress, None)
    key = sweep_key(model, pairs, intervention, multipliers, split, loss, max_answer_tokens, batch_size)
    folder = cache_root() / "sweeps"
    target = folder / f"{key}.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f".{key}.lock"):
        if target.is_file():
            return pd.read_parquet(target)
        chunks = folder / f"{key}.partial"
        chunks.mkdir(exist_ok=True)
        table = _compute(model, tokenizer, pairs, intervention, multipliers, split, loss, max_answer_tokens,
                         batch_size, progress, chunks)
        partial = folder / f".{key}.parquet.part-{os.getpid()}"
        table.to_parquet(partial, index=False)
        os.replace(partial, target)
        shutil.rmtree(chunks, ignore_errors=True)
    return pd.read_parquet(target)


def _compute(model, tokenizer, pairs, intervention, multipliers, split, loss, max_answer_tokens, batch_size,
             progress, chunks) -> pd.DataFrame:
    from tqdm.auto import tqdm

    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    mask_format = packed_mask_format(model)
    losses = np.empty((len(multipliers), 2 * len(encoded)))
    batches = _batches(encoded, batch_size)
    label = f"sweep {split} ({intervention.form if intervention else 'no intervention'})"
    for number, indices in enumerate(tqdm(batches, desc=label, disable=not progress, unit="batch")):
        columns = [j for i in indices for j in (2 * i, 2 * i + 1)]
        saved = chunks / f"batch-{number:05d}.npy" if chunks is not None else None
        if saved is not None and saved.is_file():
            losses[:, columns] = np.load(saved)  # finished before an interruption
            continue
        batch = collate_pairs([encoded[i] for i in indices], pad_token_id(tokenizer), device,
                         packed=mask_format is not None, mask_format=mask_format or "bool", dtype=dtype)
        result = _losses_per_multiplier(model, batch, intervention, multipliers, loss)
        losses[:, columns] = result
        if saved is not None:
            partial = saved.with_name(f".{saved.name}.part")
            with open(partial, "wb") as handle:
                np.save(handle, result)
            os.replace(partial, saved)
    return _table(pairs, split, multipliers, losses)


def pad_token_id(tokenizer: object) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def naive_sweep(
    model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair], intervention: Intervention | None,
    multipliers: Sequence[float], *, split: str = "test", loss: str = "mean", max_answer_tokens: int | None = None,
) -> pd.DataFrame:
    """The reference code's loss mode: one full hooked forward per pair per multiplier, full logits.
    The engine must agree with it; it exists to check and to time the engine."""
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device = next(model.parameters()).device
    losses = np.empty((len(multipliers), 2 * len(encoded)))
    with torch.no_grad():
        for k, m in enumerate(multipliers):
            for i, pair in enumerate(encoded):
                batch = collate_pairs([pair], pad_token_id(tokenizer), device, packed=False)
                with intervention.apply(model, m) if intervention is not None else _nothing():
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                nll = token_nll(logits[batch.rows, batch.cols], batch.targets)
                losses[k, 2 * i : 2 * i + 2] = reduce_nll(nll, batch.lengths, loss).cpu().numpy()
    return _table(pairs, split, multipliers, losses)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def completion_activations(model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair], layer: int,
                           max_answer_tokens: int | None = None, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """Layer-L outputs at the completion tokens of every answer, unsteered.

    Returns (per-answer means, shape (2 * n_pairs, d), rows A_p, A_n per pair; and the norm of
    every completion token's activation)."""
    if not pairs:
        raise ValueError("needs at least one pair")
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device = next(model.parameters()).device
    n_layers = len(decoder_layers(model))
    means = torch.empty(2 * len(encoded), model.config.hidden_size, dtype=torch.float64)
    norms = []
    with torch.no_grad():
        for indices in _batches(encoded, batch_size):
            batch = collate_pairs([encoded[i] for i in indices], pad_token_id(tokenizer), device, packed=False)
            if layer + 1 < n_layers:
                with layer_window(model, 0, layer + 1) as window:
                    decoder_forward(model, batch)
                output = window.entering_stop
            else:
                output = _pre_norm_output(model, batch)
            selected = output[batch.rows, batch.own_cols].double()  # the completion tokens themselves
            norms.append(selected.norm(dim=-1).cpu())
            rows = [j for i in indices for j in (2 * i, 2 * i + 1)]
            for row, chunk in zip(rows, torch.split(selected, batch.lengths)):
                means[row] = chunk.mean(dim=0).cpu()
    return means, torch.cat(norms)


def diffmean(model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair], layer: int,
             max_answer_tokens: int | None = None, batch_size: int = 16) -> Intervention:
    """DiffMean: the mean over pairs of [mean layer-L output over A_p's completion tokens] minus the
    same for A_n, as a vector-form intervention at `layer`. (The last prompt token is shared by
    both answers, so a difference taken there would be zero.)"""
    means, _ = completion_activations(model, tokenizer, pairs, layer, max_answer_tokens, batch_size)
    direction = (means[0::2] - means[1::2]).mean(dim=0).float()
    return Intervention("vector", layer, delta_b=direction).requires_grad_(False)


def residual_norm(model: nn.Module, tokenizer: object, pairs: Sequence[PolarityPair], layer: int,
                  max_answer_tokens: int | None = None) -> float:
    """The median norm of layer L's output over completion tokens: the natural unit for how far a
    vector moves the residual stream."""
    _, norms = completion_activations(model, tokenizer, pairs, layer, max_answer_tokens)
    return float(norms.median())


def _pre_norm_output(model: nn.Module, batch: PairBatch) -> Tensor:
    """The last layer's output before the final norm (for DiffMean at the last layer)."""
    captured = {}
    norm = model.get_decoder().norm
    hook = norm.register_forward_pre_hook(lambda module, args: captured.setdefault("h", args[0]))
    try:
        decoder_forward(model, batch)
    finally:
        hook.remove()
    return captured["h"]
