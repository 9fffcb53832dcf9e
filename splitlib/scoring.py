"""Preference and utility log-odds from two teacher-forced losses (the paper's §3.2, App. D).

A polarity pair is scored by the losses of its concept-positive answer A_p and concept-negative
answer A_n to the same question:

    PrefOdds = L_n - L_p
    UtilOdds = log[(e^-L_p + e^-L_n) / (1 - e^-L_p - e^-L_n)]

The prompt is the chat template with the question as the user turn plus the generation prompt;
the scored completion is the answer plus the template's end-of-turn text. Prompt tokens are not
scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import numpy as np
import torch
from torch import Tensor

from .checks import check_positive_int

if TYPE_CHECKING:
    import pandas as pd

# A Hugging Face tokenizer (transformers.PreTrainedTokenizerBase, or a test's stand-in). Any: its
# __call__ and apply_chat_template return loose unions that every use would have to narrow.
Tokenizer: TypeAlias = Any
LossKind = Literal["mean", "sum"]
LOSS_KINDS = ("mean", "sum")
# Where e^-L_p + e^-L_n reaches 1 the utility log-odds is undefined; the sum is clamped to
# 1 - UTIL_CLAMP_EPS (UtilOdds <= ~13.8) and the pair is counted as clamped.
UTIL_CLAMP_EPS = 1e-6
_MARKER = "\u2063SPLITLIB-ANSWER\u2063"


def check_loss(loss: str) -> LossKind:
    if loss not in LOSS_KINDS:
        raise ValueError(f"unknown loss {loss!r}; choose 'mean' (mean token NLL, the reference code's) or 'sum'")
    return cast(LossKind, loss)


def chat_prompt(tokenizer: Tokenizer, question: str) -> str:
    """The question as one user turn plus the generation prompt, as text (the template's own
    default system prompt, if any, is kept, as in the reference code with an empty system prompt)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def end_of_turn(tokenizer: Tokenizer) -> str:
    """The text the chat template appends after an assistant message (e.g. '<|im_end|>\\n')."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1"}, {"role": "assistant", "content": _MARKER}], tokenize=False
    )
    return text[text.rindex(_MARKER) + len(_MARKER) :]


def template_head_length(tokenizer: Tokenizer) -> int:
    """Tokens of the chat template's head, the common prefix of every prompt before the user's
    words (system prompt, role markers). The reference code's `prefix_length`: it steers from
    there on, so in training and scoring the update leaves these positions alone."""
    first, second = (tokenizer(chat_prompt(tokenizer, text), add_special_tokens=False).input_ids for text in "12")
    return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of a pair's prompt and of its two completions (answer + end-of-turn text), and
    how many leading prompt tokens the update leaves alone (the template's head)."""

    prompt: tuple[int, ...]
    positive: tuple[int, ...]
    negative: tuple[int, ...]
    unsteered: int = 0

    @property
    def length(self) -> int:
        """Tokens of the pair laid end to end: prompt, A_p's completion, A_n's."""
        return len(self.prompt) + len(self.positive) + len(self.negative)


def encode_pair(tokenizer: Tokenizer, question: str, positive: str, negative: str,
                max_answer_tokens: int | None = None, head: int | None = None) -> EncodedPair:
    """Prompt tokens and the tokens of each answer + end-of-turn text.

    Prompt and completions are tokenised separately, the way a model generating the answer would
    see them. `max_answer_tokens` truncates long answers (before the end-of-turn text). `head` is
    `template_head_length(tokenizer)`, computed here unless the caller encoding many pairs passes it.
    """
    check_positive_int("max_answer_tokens", max_answer_tokens, optional=True)  # a slice of -1 drops a token
    prompt = tokenizer(chat_prompt(tokenizer, question), add_special_tokens=False).input_ids
    head = template_head_length(tokenizer) if head is None else head
    if head >= len(prompt):
        raise ValueError(f"the prompt for {question[:60]!r} is no longer than the chat template's head ({head} tokens)")
    suffix = tokenizer(end_of_turn(tokenizer), add_special_tokens=False).input_ids

    def completion(answer: str) -> tuple[int, ...]:
        ids = tokenizer(answer, add_special_tokens=False).input_ids[:max_answer_tokens]
        if not ids:
            raise ValueError(f"the answer {answer!r} to {question[:60]!r} has no tokens")
        return tuple(ids + suffix)

    return EncodedPair(tuple(prompt), completion(positive), completion(negative), head)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Negative log-likelihood of each target token under logits (n, vocab), in float32."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def reduce_nll(nll: Tensor, lengths: list[int], loss: LossKind) -> Tensor:
    """Per-sequence loss from a flat vector of token NLLs laid out sequence after sequence."""
    check_loss(loss)
    pieces = torch.split(nll, lengths)
    return torch.stack([p.mean() if loss == "mean" else p.sum() for p in pieces])


def pref_odds(loss_p: np.ndarray, loss_n: np.ndarray) -> np.ndarray:
    """PrefOdds = L_n - L_p (Eq. 7): log P(p_p|q)/P(p_n|q) under the factorisation."""
    return np.asarray(loss_n, dtype=float) - np.asarray(loss_p, dtype=float)


def util_odds(loss_p: np.ndarray, loss_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UtilOdds (Eq. 8) and a mask of the pairs whose probability sum had to be clamped below 1."""
    total = np.exp(-np.asarray(loss_p, dtype=float)) + np.exp(-np.asarray(loss_n, dtype=float))
    clamped = total >= 1.0 - UTIL_CLAMP_EPS
    total = np.minimum(total, 1.0 - UTIL_CLAMP_EPS)
    with np.errstate(divide="ignore"):  # total = 0 (both losses huge) gives -inf, which is the truth
        return np.log(total) - np.log1p(-total), clamped


def summarise(table: pd.DataFrame, by: tuple[str, ...] = ("split", "m"), n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> pd.DataFrame:
    """Mean PrefOdds, UtilOdds and accuracy (share of pairs with PrefOdds > 0) per group, with
    percentile bootstrap intervals over pairs (pairs resampled with replacement, the same
    resample for every m of a split, so the bands describe the uncertainty of whole curves).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    tail = (1 - level) / 2
    for keys, group in table.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys))
        row["pairs"] = len(group)
        row["clamped"] = int(group.clamped.sum())
        rows.append((row, group))
    # one resample of pair indices per split, reused for every m
    resamples: dict[object, np.ndarray] = {}
    out = []
    for row, group in rows:
        split_key = row.get("split", "all")
        n = len(group)
        if (split_key, n) not in resamples:
            resamples[(split_key, n)] = rng.integers(0, n, size=(n_boot, n))
        index = resamples[(split_key, n)]
        ordered = group.sort_values("pair_id")
        for name, values in (
            ("pref_odds", ordered.pref_odds.to_numpy()),
            ("util_odds", ordered.util_odds.to_numpy()),
            ("accuracy", (ordered.pref_odds.to_numpy() > 0).astype(float)),
        ):
            boot = values[index].mean(axis=1)
            row[name] = values.mean()
            row[f"{name}_low"], row[f"{name}_high"] = np.quantile(boot, [tail, 1 - tail])
        out.append(row)
    return pd.DataFrame(out)


def choose_multiplier(summary: pd.DataFrame, tolerance: float = 1.0, x: str = "m") -> float:
    """The m >= 0 with the highest accuracy (ties: highest PrefOdds, then smallest m) among those
    whose mean UtilOdds stays within `tolerance` nats of its value at m = 0.

    Meant for a *training*-split summary, so that the test split only reports.
    """
    at_zero = summary.loc[summary[x] == 0, "util_odds"]
    if at_zero.empty:
        raise ValueError(f"choose_multiplier needs the unsteered point {x} = 0 in the summary")
    allowed = summary[(summary[x] >= 0) & (summary.util_odds >= float(at_zero.iloc[0]) - tolerance)]
    ranked = allowed.assign(neg_m=-allowed[x]).sort_values(["accuracy", "pref_odds", "neg_m"], ascending=False)
    return float(ranked[x].iloc[0])
