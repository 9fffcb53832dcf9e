"""The one place that runs a model in two parts: the forward engine of sweeps, training and capture.

Layers below the intervention layer L do not depend on m nor on the update, and neither does what
layer L computes before the update is added; so a batch runs layers 0..L once (the *lower pass*),
and layer L's steered output at any m is its unsteered output plus m·Δh (`UnsteeredLayer`). The
layers above L (the *upper pass*) then run for many multipliers in one forward: the batch's rows
are repeated once per multiplier and each repetition carries its own m. Pairs are packed into rows as prefix-sharing
trees (`collate_pairs`), logits are computed only where a token is scored, and hidden states are
captured at requested depths in the same pass. Batches are sized by a token budget, not a count.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from .attention import packed_attention_mask
from .cache import source_digest, stable_hash
from .data import PolarityPair
from .interventions import Intervention
from .models import as_causal_lm, decoder_layers, down_projection, model_fingerprint, recording
from .profiles import EngineSettings
from .scoring import EncodedPair, Tokenizer, encode_pair, template_head_length, token_nll

# Tokens per upper-pass forward (rows x width x multipliers) on a CPU; a GPU sizes it from free memory.
CPU_TOKEN_BUDGET = 8192
# Float32 logits per LM-head call (1 GiB): 45k scored tokens x Gemma's 256k vocabulary would be 43 GiB.
LOGIT_ELEMENTS = 1 << 28


# ----- settings ----------------------------------------------------------------------------------------
def resolved(settings: EngineSettings, model: nn.Module) -> EngineSettings:
    """`settings` with the token budget fixed for `model`'s device."""
    if settings.token_budget is not None:
        return settings
    return replace(settings, token_budget=device_token_budget(model, settings.row_tokens))


def device_token_budget(model: nn.Module, row_tokens: int = 2048) -> int:
    """A token budget for one upper-pass forward: a small fixed one on a CPU; on a GPU, what a
    quarter of the free memory holds (a few layers' activations in flight, and float32 attention
    scores over rows of up to `row_tokens`)."""
    parameter = next(model.parameters())
    if parameter.device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(parameter.device)
    config = as_causal_lm(model).config
    per_token = ((config.hidden_size * 6 + config.intermediate_size * 3) * parameter.element_size()
                 + config.num_attention_heads * row_tokens * 4 * 2)
    return int(max(4096, min(1 << 17, free // 4 // per_token)))


# ----- encoding and batches ----------------------------------------------------------------------------
def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[PolarityPair],
                 max_answer_tokens: int | None = None) -> list[EncodedPair]:
    """Token ids of each pair's prompt and its two completions (see `scoring.encode_pair`)."""
    head = template_head_length(tokenizer)
    return [encode_pair(tokenizer, p.question, p.positive, p.negative, max_answer_tokens, head) for p in pairs]


def pad_token_id(tokenizer: Tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass
class PairBatch:
    """Rows of tokens and where each scored token sits (sequences ordered A_p, A_n per pair)."""

    input_ids: Tensor
    attention_mask: Tensor | BlockMask  # a 2-D padding mask, or what the attention implementation takes for packed rows
    position_ids: Tensor
    rows: Tensor  # row of each scored token
    cols: Tensor  # position whose logits predict that token
    targets: Tensor
    lengths: list[int]  # scored tokens per sequence
    own_cols: Tensor  # position of each scored token itself
    real: Tensor  # (rows, width) bool: a real token, not padding
    steered: Tensor  # (rows, width) bool: the update acts here (past the chat template's head)
    source: Tensor  # (rows, width): index into the batch's pairs laid end to end, each prompt, A_p, A_n
    allowed: Tensor | None = None  # packed rows: the (rows, 1, width, width) permission matrix

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.real.sum())

    def repeated(self, times: int, model: nn.Module) -> PairBatch:
        """The batch's rows `times` over (one copy per multiplier); scored rows follow the copies."""
        if times == 1:
            return self
        offsets = torch.arange(times, device=self.rows.device).repeat_interleave(len(self.rows)) * self.n_rows
        if self.allowed is not None:  # one packed row: copies share its memory (an expanded view)
            allowed = (self.allowed.expand(times, -1, -1, -1) if self.n_rows == 1
                       else self.allowed.repeat(times, 1, 1, 1))
            mask = packed_attention_mask(model, allowed, next(model.parameters()).dtype)
        else:
            assert isinstance(self.attention_mask, Tensor)  # rows not packed: a 2-D padding mask
            allowed, mask = None, self.attention_mask.repeat(times, 1)
        return PairBatch(self.input_ids.repeat(times, 1), mask, self.position_ids.repeat(times, 1),
                         self.rows.repeat(times) + offsets, self.cols.repeat(times), self.targets.repeat(times),
                         self.lengths * times, self.own_cols.repeat(times), self.real.repeat(times, 1),
                         self.steered.repeat(times, 1), self.source.repeat(times, 1), allowed)

    def multipliers(self, values: Tensor) -> Tensor:
        """(rows, width, 1): the multiplier at each token, from one per row (rows,) or one per token
        (rows, width), and 0 where the update does not act (the template's head, padding)."""
        per_token = values.view(-1, 1) if values.dim() == 1 else values
        return (per_token * self.steered.to(values.dtype)).unsqueeze(-1)


def collate_pairs(encoded: Sequence[EncodedPair], pad_id: int, device: torch.device | str, packed: bool,
                  model: nn.Module | None = None, row_per_pair: bool = False, pad_to: int = 1,
                  share_unsteered_only: bool = False) -> PairBatch:
    """The sequences of a batch of pairs as padded rows, with where each scored token sits.

    Separate (`packed=False`): two rows per pair, prompt + A_p and prompt + A_n, right-padded.
    Packed: all pairs of the batch in one row laid out as a tree: the prompts' common prefix, then
    per pair the rest of its prompt, A_p and A_n. A 4-D mask lets each token see only its own
    branch (A_n never sees A_p, pair i never sees pair j) and positions restart where each branch
    starts, so every answer is scored exactly as if it were alone, while the shared prefix and each
    prompt are computed once. `row_per_pair` packs each pair in a row of its own.
    `share_unsteered_only` lets the pairs of a packed row share no more than the chat template's
    head, which the update leaves alone: training draws one m per pair, so nothing the update acts
    on can be shared. Packed rows need `model` (its attention implementation decides the mask's
    form). `pad_to` rounds the width up to a multiple of it.
    """
    if not packed:
        rows = [_tree_row([pair], only=side) for pair in encoded for side in (0, 1)]
    else:
        if model is None:
            raise ValueError("packed rows need the model: its attention implementation decides the mask's form")
        rows = ([_tree_row([pair]) for pair in encoded] if row_per_pair
                else [_tree_row(encoded, share_unsteered_only=share_unsteered_only)])
    width = -(-max(len(row.tokens) for row in rows) // pad_to) * pad_to
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    steered = torch.zeros((len(rows), width), dtype=torch.bool)
    source = torch.zeros((len(rows), width), dtype=torch.long)
    scored_rows, cols, own, targets, lengths = [], [], [], [], []
    for r, row in enumerate(rows):
        n = len(row.tokens)
        ids[r, :n] = torch.tensor(row.tokens)
        positions[r, :n] = torch.tensor(row.positions)
        real[r, :n] = True
        steered[r, :n] = torch.tensor(row.steered)
        source[r, :n] = torch.tensor(row.source)
        for first, count, predictor in row.answers:
            scored_rows += [r] * count
            cols += [predictor] + list(range(first, first + count - 1))
            own += list(range(first, first + count))
            targets += list(row.tokens[first : first + count])
            lengths.append(count)
    allowed = _tree_allowed(rows, width).to(device) if packed else None
    attention: Tensor | BlockMask
    if allowed is not None:
        assert model is not None  # checked above for packed rows
        attention = packed_attention_mask(model, allowed, next(model.parameters()).dtype)
    else:
        attention = real.long().to(device)
    to = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return PairBatch(ids.to(device), attention, positions.to(device), to(scored_rows), to(cols), to(targets),
                     lengths, to(own), real.to(device), steered.to(device), source.to(device), allowed)


@dataclass
class _Row:
    tokens: list[int]
    positions: list[int]
    segment: list[int]  # segment id of each token
    parent: list[int]  # parent segment of each segment (-1 for the root)
    answers: list[tuple[int, int, int]]  # (first token index, count, index of the token predicting the first)
    steered: list[bool]  # the update acts on the token (it lies past its pair's template head)
    source: list[int]  # the token's index in the row's pairs laid end to end (each prompt, A_p, A_n)


def _tree_row(pairs: Sequence[EncodedPair], only: int | None = None, share_unsteered_only: bool = False) -> _Row:
    """One row: common prompt prefix (with `share_unsteered_only`, at most the template's head),
    then per pair its prompt rest, A_p and A_n (or only one answer)."""
    head = min(p.unsteered for p in pairs)
    prefix = _common_prefix([p.prompt for p in pairs], limit=head if share_unsteered_only else None)
    row = _Row(list(prefix), list(range(len(prefix))), [0] * len(prefix), [-1], [],
               [i >= head for i in range(len(prefix))], list(range(len(prefix))))
    offset = 0
    for pair in pairs:
        rest = pair.prompt[len(prefix) :]
        branch = 0
        if rest:
            branch = _add_segment(row, rest, parent=0, start_position=len(prefix), unsteered=pair.unsteered,
                                  source=offset + len(prefix))
        predictor = _last_token_of(row, branch)
        for side in (0, 1) if only is None else (only,):
            answer = (pair.positive, pair.negative)[side]
            first = len(row.tokens)
            _add_segment(row, answer, parent=branch, start_position=len(pair.prompt), unsteered=pair.unsteered,
                         source=offset + len(pair.prompt) + (len(pair.positive) if side else 0))
            row.answers.append((first, len(answer), predictor))
        offset += pair.length
    return row


def _add_segment(row: _Row, tokens: Sequence[int], parent: int, start_position: int, unsteered: int,
                 source: int) -> int:
    """Append `tokens` as a new segment under `parent`; positions below `unsteered` (the head) stay unsteered."""
    segment = len(row.parent)
    row.parent.append(parent)
    row.tokens += tokens
    row.positions += range(start_position, start_position + len(tokens))
    row.segment += [segment] * len(tokens)
    row.steered += [position >= unsteered for position in range(start_position, start_position + len(tokens))]
    row.source += range(source, source + len(tokens))
    return segment


def _last_token_of(row: _Row, segment: int) -> int:
    while True:
        indices = [i for i, s in enumerate(row.segment) if s == segment]
        if indices:
            return indices[-1]
        segment = row.parent[segment]


def _common_prefix(sequences: Sequence[Sequence[int]], limit: int | None = None) -> tuple[int, ...]:
    """The longest common prefix (of at most `limit` tokens), kept one token short of the shortest
    prompt so every pair keeps at least its last prompt token in its own branch (which predicts the
    answers)."""
    shortest = min(len(s) for s in sequences)
    longest = shortest - 1 if limit is None else min(shortest - 1, limit)
    n = 0
    while n < longest and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return tuple(sequences[0][:n])


def _tree_allowed(rows: Sequence[_Row], width: int) -> Tensor:
    """(rows, 1, width, width) bool: token q may attend to token k if k's segment is q's own (and
    k <= q) or an ancestor of q's. Padding sees only itself, so no softmax row is all masked."""
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
    allowed |= torch.eye(width, dtype=torch.bool)
    return allowed[:, None]


def plan_batches(encoded: Sequence[EncodedPair], settings: EngineSettings) -> list[list[int]]:
    """Pair indices per packed row; prompts sorted so that a row shares a long common prefix, and a
    row kept under `settings.row_tokens` tokens and `settings.pairs_per_row` pairs."""
    order = sorted(range(len(encoded)), key=lambda i: (encoded[i].prompt, i))
    batches: list[list[int]] = []
    tokens = 0
    for i in order:
        size = encoded[i].length
        if not batches or len(batches[-1]) >= settings.pairs_per_row or tokens + size > settings.row_tokens:
            batches.append([])
            tokens = 0
        batches[-1].append(i)
        tokens += size
    return batches


def kept_positions(length: int, per_answer: int) -> np.ndarray:
    """Evenly spaced indices into `length` positions, at most `per_answer` of them (first and
    last included): activations along an answer are strongly correlated, so a few spread out
    represent it at a fraction of the memory."""
    if per_answer < 1:
        raise ValueError(f"tokens_per_answer must be at least 1, got {per_answer}")
    if length < 1:
        return np.zeros(0, dtype=int)
    return np.unique(np.round(np.linspace(0, length - 1, min(length, per_answer))).astype(int))


def scored_reads(lengths: Sequence[int], pair_indices: Sequence[int], per_answer: int) -> tuple[np.ndarray, list]:
    """Which of a batch's predictor positions (indices into its scored tokens) to keep for a
    capture, and (pair, answer, position) for each: per pair its last prompt token once (both
    answers read it; answer -1), then up to `per_answer` evenly spaced answer tokens that predict
    the next answer token (answer 1 for A_p, 0 for A_n)."""
    keep: list[list[int] | np.ndarray] = []
    meta, offset = [], 0
    for number, length in enumerate(lengths):  # sequences: A_p, A_n per pair
        pair, answer = pair_indices[number // 2], 1 - number % 2
        if answer == 1:
            keep.append([offset])
            meta.append((pair, -1, -1))
        positions = kept_positions(length - 1, per_answer)
        keep.append(offset + 1 + positions)
        meta += [(pair, answer, int(p)) for p in positions]
        offset += length
    return np.concatenate(keep), meta


# ----- running part of the layer stack -----------------------------------------------------------------
class _PassThrough(nn.Module):
    """Stands in for a decoder layer that must not compute: returns its input hidden state."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.attention_type = getattr(original, "attention_type", None)  # read by some model loops

    def forward(self, hidden_states: Tensor, *_args: object, **_kwargs: object) -> Tensor:
        return hidden_states


@contextmanager
def layer_window(model: nn.Module, start: int, stop: int, inject: Tensor | None = None) -> Iterator[None]:
    """Within the block only decoder layers start..stop-1 compute; the others pass their input on.

    `inject` replaces the hidden state entering layer `start` (past the last layer: the final
    norm's input). Embeddings, masks and positions are the model's own.
    """
    layers = decoder_layers(model)
    originals = list(layers)

    def replace_input(_module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        assert inject is not None  # hooked only when given
        return (inject.to(args[0].dtype),) + args[1:], kwargs

    hook = None
    try:
        for index, layer in enumerate(originals):
            if not start <= index < stop:
                layers[index] = _PassThrough(layer)
        if inject is not None:
            target = layers[start] if start < len(layers) else as_causal_lm(model).get_decoder().norm
            hook = target.register_forward_pre_hook(replace_input, with_kwargs=True)
        yield
    finally:
        if hook is not None:
            hook.remove()
        for index, layer in enumerate(originals):
            layers[index] = layer


def hidden_state_module(model: nn.Module, index: int) -> nn.Module:
    """The module whose output is hidden state `index` in transformers' numbering: decoder layer
    index - 1, or the final norm for index = n_layers."""
    layers = decoder_layers(model)
    if not 1 <= index <= len(layers):
        raise ValueError(f"hidden state {index} is out of range: {type(model).__name__} has hidden states "
                         f"1..{len(layers)} (i = output of layer i-1, {len(layers)} = final norm)")
    return as_causal_lm(model).get_decoder().norm if index == len(layers) else layers[index - 1]


def decoder_forward(model: nn.Module, batch: PairBatch) -> Tensor:
    """The decoder's final hidden states (after its final norm) for a batch."""
    with attention_backends(model):
        return as_causal_lm(model).get_decoder()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).last_hidden_state


def attention_backends(model: nn.Module) -> AbstractContextManager:
    """On a GPU with sdpa, the kernels that take an arbitrary mask without planning anew for every
    row width (memory-efficient, then math): cuDNN's attention re-plans per shape, which was most
    of the host time of a GPU sweep. Elsewhere nothing changes."""
    parameter = next(model.parameters())
    if parameter.device.type != "cuda" or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def lm_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """The LM head on selected final hidden states (with Gemma-2's final soft-capping)."""
    logits = as_causal_lm(model).get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def scored_nll(model: nn.Module, batch: PairBatch, final_hidden: Tensor) -> Tensor:
    """NLL of every scored token of a batch from its final hidden states (logits only there), the
    LM head run on chunks of tokens: a batch of long answers never holds all its float32 logits."""
    hidden, targets = final_hidden[batch.rows, batch.cols], batch.targets
    step = max(1, LOGIT_ELEMENTS // as_causal_lm(model).config.vocab_size)
    if len(targets) <= step:
        return token_nll(lm_logits(model, hidden), targets)
    return torch.cat([token_nll(lm_logits(model, h), t) for h, t in zip(hidden.split(step), targets.split(step))])


@dataclass
class LowerPass:
    """What the layers below a split point computed for a batch, independent of any update."""

    entering: Tensor  # the hidden state entering the split layer (past the end: the final norm's input)
    final: Tensor | None  # final hidden states, when the split is past the last layer
    hidden: dict[int, Tensor]  # requested hidden states computed below the split


def lower_pass(model: nn.Module, batch: PairBatch, split: int, hidden_states: Sequence[int] = ()) -> LowerPass:
    """Run layers 0..split-1 once; keep the state entering layer `split` and the requested hidden
    states (transformers numbering) that lie below it."""
    # layers from `split` on pass their input on, so the final norm receives the state entering `split`
    past_the_end = split >= len(decoder_layers(model))
    with (recording({i: hidden_state_module(model, i) for i in hidden_states}) as seen,
          recording({"norm": as_causal_lm(model).get_decoder().norm}, inputs=True) as received,
          layer_window(model, 0, split)):
        final = decoder_forward(model, batch)
    return LowerPass(received["norm"], final if past_the_end else None, dict(seen))


def upper_pass(model: nn.Module, batch: PairBatch, split: int, entering: Tensor,
               hidden_states: Sequence[int] = ()) -> tuple[Tensor, dict[int, Tensor]]:
    """Run layers split..end from `entering` (the state entering layer `split`); return the final
    hidden states and the requested hidden states above the split."""
    n_layers = len(decoder_layers(model))
    modules = {i: hidden_state_module(model, i) for i in hidden_states}
    with layer_window(model, split, n_layers, inject=entering), recording(modules) as seen:
        final = decoder_forward(model, batch)
    return final, dict(seen)


@dataclass
class BatchResult:
    """A batch at every multiplier: scored-token NLLs and hidden states at chosen positions."""

    nll: Tensor  # (n_multipliers, n_scored_tokens)
    hidden: dict[int, Tensor]  # hidden state -> (n_multipliers, n_kept, width), float32 on the CPU


def post_norm(model: nn.Module, layer: int) -> nn.Module | None:
    """The norm between layer `layer`'s down-projection and its residual add (Gemma-2), if any."""
    return getattr(decoder_layers(model)[layer], "post_feedforward_layernorm", None)


def with_shift(model: nn.Module, layer: int, layer_output: Tensor, down_output: Tensor | None, shift: Tensor) -> Tensor:
    """Layer `layer`'s output with m·Δh added, from what the layer computed without it: out + shift,
    or, for a weight form behind a post-norm (`down_output` given), (out - norm(down)) + norm(down + shift)."""
    norm = post_norm(model, layer)
    if down_output is None or norm is None:
        return layer_output + shift
    return layer_output - norm(down_output) + norm(down_output + shift)


@dataclass
class UnsteeredLayer:
    """What the intervention layer computed for a batch without the update, from which its steered
    output at any m follows (`with_shift`) without running the layer again."""

    output: Tensor  # the layer's output
    delta: Tensor  # Δh at m = 1 at every position (ΔW h + Δb, or Δb for a vector)
    down_output: Tensor | None  # the down-projection's output, where a post-norm follows it

    def steered(self, model: nn.Module, layer: int, multipliers: Tensor, copies: int) -> Tensor:
        """The layer's output for `copies` copies of the batch, m·Δh added at per-token `multipliers`."""
        def repeated(x: Tensor) -> Tensor:
            return x.repeat(copies, 1, 1) if copies > 1 else x

        shift = multipliers.to(self.output.dtype) * repeated(self.delta).to(self.output.dtype)
        down = repeated(self.down_output) if self.down_output is not None else None
        return with_shift(model, layer, repeated(self.output), down, shift)


@dataclass
class LayerRecord:
    """What layers 0..L computed for a batch without any update: what an update at L acts on."""

    output: Tensor  # layer L's output
    down_input: Tensor | None  # its down-projection's input, from which ΔW h follows (weight forms)
    down_output: Tensor | None  # its down-projection's output, where a post-norm follows it (weight forms)
    hidden: dict[int, Tensor]  # requested hidden states below L's output


def intervention_layer(model: nn.Module, batch: PairBatch, layer: int, weight_form: bool,
                       hidden_states: Sequence[int] = ()) -> LayerRecord:
    """Run layers 0..`layer` once and keep what an update there needs (`LayerRecord`): shared by
    sweeps (`unsteered_layer`) and training, which add m·Δh to the same output (`with_shift`)."""
    down = {"down": down_projection(model, layer)} if weight_form else {}
    with recording(down, inputs=True) as down_input, recording(down) as down_output:
        lower = lower_pass(model, batch, layer + 1, hidden_states)
    behind_norm = weight_form and post_norm(model, layer) is not None
    return LayerRecord(lower.entering, down_input["down"] if weight_form else None,
                       down_output["down"] if behind_norm else None, lower.hidden)


def unsteered_layer(model: nn.Module, batch: PairBatch, intervention: Intervention,
                    hidden_states: Sequence[int] = ()) -> tuple[UnsteeredLayer, dict[int, Tensor]]:
    """Run layers 0..L once (L = the intervention's layer): layer L's unsteered output, the update's
    Δh there, and the requested hidden states (transformers numbering) below L's output."""
    update = intervention.placed_for(model)
    record = intervention_layer(model, batch, intervention.layer, intervention.form != "vector", hidden_states)
    delta = update.delta(record.down_input if record.down_input is not None else record.output)
    return UnsteeredLayer(record.output, delta, record.down_output), record.hidden


def steered_batch(model: nn.Module, batch: PairBatch, intervention: Intervention | None, multipliers: Sequence[float],
                  settings: EngineSettings, hidden_states: Sequence[int] = (),
                  keep: Tensor | None = None) -> BatchResult:
    """Score a batch at every multiplier: the layers up to the intervention's once, the layers above
    it once per group of multipliers that fits the token budget (rows repeated, one m per copy). The
    intervention layer's steered output follows from its unsteered one for every m (`UnsteeredLayer`).

    `hidden_states` (transformers numbering) are captured at the scored-token predictors indexed
    by `keep` (into batch.rows/cols; all of them when None) in the same pass."""
    n_layers = len(decoder_layers(model))
    keep = torch.arange(len(batch.rows), device=batch.rows.device) if keep is None else keep
    rows, cols = batch.rows[keep], batch.cols[keep]
    k = len(multipliers)
    hidden: dict[int, Tensor] = {}

    def kept(state: Tensor, copies: int) -> Tensor:
        return state.view(copies, batch.n_rows, *state.shape[1:])[:, rows, cols].float().cpu()

    with torch.no_grad():
        if intervention is None:
            lower = lower_pass(model, batch, n_layers, hidden_states)
            assert lower.final is not None  # the split is past the last layer
            hidden = {i: kept(lower.hidden[i], 1).expand(k, -1, -1) for i in hidden_states}
            return BatchResult(scored_nll(model, batch, lower.final).expand(k, -1), hidden)
        layer = intervention.layer
        below = [i for i in hidden_states if i <= layer]  # outputs of layers below L: unsteered
        at_layer = layer + 1 in hidden_states  # layer L's own output: steered
        above = [i for i in hidden_states if i > layer + 1]
        unsteered, lower_hidden = unsteered_layer(model, batch, intervention, below)
        hidden = {i: kept(lower_hidden[i], 1).expand(k, -1, -1) for i in below}
        assert settings.token_budget is not None  # resolved
        size = batch.n_rows * batch.input_ids.shape[1]
        if size > settings.token_budget:
            raise ValueError(f"a batch of {batch.n_rows} row(s) of {batch.input_ids.shape[1]} tokens does not fit the "
                             f"token budget of {settings.token_budget}: raise EngineSettings.token_budget")
        per_forward = settings.token_budget // size
        nll: list[Tensor] = []
        captured: dict[int, list[Tensor]] = {i: [] for i in ([layer + 1] if at_layer else []) + above}
        for start in range(0, k, per_forward):
            group = [float(m) for m in multipliers[start : start + per_forward]]
            copies = batch.repeated(len(group), model)
            m = copies.multipliers(torch.tensor(group, device=batch.input_ids.device).repeat_interleave(batch.n_rows))
            steered = unsteered.steered(model, layer, m, len(group))
            final, seen = upper_pass(model, copies, layer + 1, steered, above)
            nll.append(scored_nll(model, copies, final).view(len(group), -1))
            if at_layer:
                seen[layer + 1] = steered
            for i in captured:
                captured[i].append(kept(seen[i], len(group)))
        hidden.update({i: torch.cat(parts) for i, parts in captured.items()})
        return BatchResult(torch.cat(nll), hidden)


# ----- keys ------------------------------------------------------------------------------------------------
def intervention_digest(intervention: Intervention | None) -> str:
    """A hash of an intervention's form, layer and exact parameter values."""
    if intervention is None:
        return "none"
    import hashlib

    digest = hashlib.sha256(f"{intervention.form}:{intervention.layer}".encode())
    for name, tensor in sorted(intervention.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def artifact_key(code: Sequence[str], model: nn.Module, pairs: Sequence[PolarityPair],
                 intervention: Intervention | None = None, /, **inputs: object) -> str:
    """The one way to key an artifact: the source of the modules that compute it, the model's
    weights, its dtype, device type and attention implementation, the pairs, the intervention and
    every other input. On a CPU the thread count is part of it too: it changes how matrix products
    are summed, and so the losses in their last digits (about 1e-5)."""
    parameter = next(model.parameters())
    return stable_hash({
        "threads": torch.get_num_threads() if parameter.device.type == "cpu" else None,
        "code": source_digest(*sorted(set(code) | {"engine", "attention", "scoring", "interventions", "models"})),
        "model": model_fingerprint(model),
        "dtype": str(parameter.dtype), "device": parameter.device.type,
        "attention": getattr(model.config, "_attn_implementation", None),
        "intervention": intervention_digest(intervention),
        "pairs": [(p.id, p.question, p.positive, p.negative) for p in pairs],
        **{name: _plain(value) for name, value in inputs.items()},
    }, length=24)


def _plain(value: object) -> object:
    """Multiplier grids and settings as JSON-ready values."""
    if isinstance(value, EngineSettings):
        return vars(value)
    if isinstance(value, np.ndarray | tuple | list):
        return [float(v) if isinstance(v, float | np.floating | int) and not isinstance(v, bool) else _plain(v)
                for v in value]
    return value
