"""Scoring: prompts, scored completions, losses and the two log-odds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitlib.scoring import (
    UTIL_CLAMP_EPS,
    chat_prompt,
    encode_pair,
    end_of_turn,
    pref_odds,
    reduce_nll,
    template_head_length,
    util_odds,
)


def test_util_odds_matches_a_hand_computation():
    # L_p = 1, L_n = 2: P = e^-1 + e^-2 = 0.5032147, UtilOdds = log(P / (1 - P)).
    value, clamped = util_odds(np.array([1.0]), np.array([2.0]))
    p = math.exp(-1) + math.exp(-2)
    assert value[0] == pytest.approx(math.log(p / (1 - p)), abs=1e-12)
    assert value[0] == pytest.approx(0.0128590, abs=1e-6)
    assert not clamped[0]


def test_util_odds_clamps_and_counts_when_the_sum_reaches_one():
    value, clamped = util_odds(np.array([0.1, 3.0]), np.array([0.2, 4.0]))
    assert clamped.tolist() == [True, False]
    assert value[0] == pytest.approx(math.log((1 - UTIL_CLAMP_EPS) / UTIL_CLAMP_EPS))


def test_pref_odds_is_the_loss_difference():
    assert pref_odds(np.array([1.5, 0.2]), np.array([0.5, 0.7])).tolist() == pytest.approx([-1.0, 0.5])


def test_mean_and_summed_losses():
    nll = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])
    assert reduce_nll(nll, [3, 2], "mean").tolist() == [2.0, 5.0]
    assert reduce_nll(nll, [3, 2], "sum").tolist() == [6.0, 10.0]
    with pytest.raises(ValueError, match="unknown loss 'max'"):
        reduce_nll(nll, [5], "max")


def test_the_prompt_is_the_chat_template_and_only_the_completion_is_scored(tokenizer):
    prompt = chat_prompt(tokenizer, "Is water wet?")
    assert prompt.rstrip().endswith("<|im_start|>assistant") and "Is water wet?" in prompt
    assert end_of_turn(tokenizer) == "<|im_end|>\n"
    encoded = encode_pair(tokenizer, "Is water wet?", "Yes", "No")
    assert list(encoded.prompt) == tokenizer(prompt, add_special_tokens=False).input_ids
    suffix = tokenizer("<|im_end|>\n", add_special_tokens=False).input_ids
    assert list(encoded.positive) == tokenizer("Yes", add_special_tokens=False).input_ids + suffix
    assert list(encoded.negative) == tokenizer("No", add_special_tokens=False).input_ids + suffix


def test_long_answers_are_truncated_before_the_end_of_turn(tokenizer):
    encoded = encode_pair(tokenizer, "Tell me about the sea.", "one two three four five six", "no", max_answer_tokens=2)
    suffix = tokenizer("<|im_end|>\n", add_special_tokens=False).input_ids
    assert len(encoded.positive) == 2 + len(suffix) and list(encoded.positive[2:]) == suffix


def test_the_template_head_is_what_every_prompt_shares_before_the_question(tokenizer):
    head = template_head_length(tokenizer)
    first = encode_pair(tokenizer, "Is the sky blue?", "Yes", "No")
    second = encode_pair(tokenizer, "Name a colour.", "Red", "Blue")
    assert first.unsteered == second.unsteered == head > 0
    assert first.prompt[:head] == second.prompt[:head] and first.prompt[head] != second.prompt[head]
    assert tokenizer.decode(first.prompt[:head]).endswith("<|im_start|>user\n")
