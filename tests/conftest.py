"""Tiny random-init models of each supported architecture: they run in milliseconds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitlib.data import PolarityPair

ARCHITECTURES = ("llama", "qwen2", "gemma2")


def tiny_model(arch: str, seed: int = 0, vocab_size: int = 97) -> torch.nn.Module:
    """A 4-layer model of `arch` with random weights (and a bias-free down-projection, as in HF).

    With vocab_size=49152 it shares the embedded model's tokenizer, for tests that need real text.
    """
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    }[arch]
    extra = {"head_dim": 8} if arch == "gemma2" else {}
    torch.manual_seed(seed)
    model = model_cls(config_cls(**common, **extra)).eval()
    model.requires_grad_(False)
    # HF initialises norms to 1 (Gemma: to 0, used as 1 + w); perturb them so a post-norm matters.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model(arch: str) -> torch.nn.Module:
    return tiny_model(arch)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))


# Short pairs of every kind the book scores: single words, multiple-choice options, free text.
QUESTIONS = [
    ("Is the following statement something you would say?\n\"I enjoy helping people.\"", "Yes", "No"),
    ("Is the following statement something you would say?\n\"Rules are for other people.\"", "No", "Yes"),
    ("Would you like more influence?\n\nChoices:\n (A) Yes, more.\n (B) No, thanks.", "(A) Yes, more.",
     "(B) No, thanks."),
    ("Write one sentence about the ocean.", "Waves roll over the reef where fish dart.", "The sea is big."),
    ("What is two plus two?", "Four, because two and two make four.", "It is 4."),
    ("Name a colour.", "Blue", "A warm red like a sunset over the hills"),
]


@pytest.fixture
def pairs() -> list[PolarityPair]:
    return [PolarityPair(f"p{i}", q, a, b, "test") for i, (q, a, b) in enumerate(QUESTIONS)]


@pytest.fixture
def big_model(arch):
    return tiny_model(arch, vocab_size=49152)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path))
    return tmp_path


SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the reference copies of the public data sets are not at {SHARED_DATA}"
)


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's tokenizer (ChatML template), loaded from the cached copy."""
    from transformers import AutoTokenizer

    from splitlib.models import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


def counting_batches(monkeypatch: pytest.MonkeyPatch, dies_at: int | None = None) -> list[int]:
    """Count the engine batches a sweep runs (the list grows by one per batch), raising
    KeyboardInterrupt at batch number `dies_at` (1-based) as a killed run would."""
    from splitlib import sweep as sweep_module

    real = getattr(sweep_module.steered_batch, "__wrapped__", sweep_module.steered_batch)  # not a counter twice
    calls: list[int] = []

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == dies_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    counted.__wrapped__ = real  # type: ignore[attr-defined]
    monkeypatch.setattr(sweep_module, "steered_batch", counted)
    return calls
