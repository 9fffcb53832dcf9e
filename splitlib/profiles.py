"""Run profiles: one name fixes the model, layer, dtype, device, data sizes and grids.

`SPLITLIB_PROFILE` picks one (default `cpu`); chapters read it through `get_profile()` so the
same code runs on a laptop CPU with the embedded model and on a GPU with the paper's models.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

PROFILE_ENV = "SPLITLIB_PROFILE"
DEFAULT_PROFILE = "cpu"
EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class SplitSizes:
    """Train/test sizes of one task (AxBench sizes are per concept)."""

    train: int
    test: int


@dataclass(frozen=True)
class TrainConfig:
    """How an intervention is trained (the reference configs' knobs, digest §5.3).

    `pair_types`: "add" trains A_p to win at +m; "sub" trains A_n to win at -m (answers swapped).
    SPLIT's loss is lambda_p*L_w + lambda_n*L_l + gamma*ReLU(theta - (L_l - L_w)).
    """

    epochs: int
    batch_size: int
    grad_accum: int
    lr: float
    multipliers: tuple[float, ...]  # |m| drawn per example
    pair_types: tuple[str, ...] = ("add",)
    lambda_p: float = 1.0
    lambda_n: float = 0.5
    gamma: float = 5.0
    theta: float = 0.4
    dropout: float = 0.1
    max_grad_norm: float = 1.0
    reps_scale: float = 1.0


_WEIGHT_MULTIPLIERS = tuple(round(0.2 * k, 1) for k in range(1, 11))  # 0.2 ... 2.0
_VECTOR_MULTIPLIERS = tuple(float(2 * k) for k in range(1, 11))  # 2 ... 20


def _paper_split(epochs, batch, accum, lr, lambda_n, gamma, theta, pairs, vector=False) -> TrainConfig:
    return TrainConfig(epochs, batch, accum, lr, _VECTOR_MULTIPLIERS if vector else _WEIGHT_MULTIPLIERS,
                       pairs, 1.0, lambda_n, gamma, theta)


ADD, ADD_SUB = ("add",), ("add", "sub")
# SPLIT's reference configs per (task, form), Gemma-2 then Qwen-2.5 (digest §5.3).
_GEMMA_SPLIT = {
    ("psychopathy", "local_weight"): _paper_split(2, 4, 2, 0.01, 0.5, 5, 0.4, ADD),
    ("psychopathy", "lora"): _paper_split(2, 4, 2, 0.01, 0.5, 5, 0.4, ADD_SUB),
    ("psychopathy", "vector"): _paper_split(2, 4, 1, 0.08, 0.5, 8, 0.3, ADD_SUB, vector=True),
    ("powerseeking", "local_weight"): _paper_split(2, 2, 2, 0.01, 0.5, 5, 0.4, ADD),
    ("powerseeking", "lora"): _paper_split(2, 2, 2, 0.01, 0.5, 5, 0.4, ADD),
    ("powerseeking", "vector"): _paper_split(2, 4, 1, 0.08, 0.5, 5, 0.5, ADD, vector=True),
    ("axbench", "local_weight"): _paper_split(12, 2, 2, 0.04, 0.3, 3.5, 0.6, ADD),
    ("axbench", "lora"): _paper_split(12, 2, 2, 0.04, 0.5, 5, 0.45, ADD),
    ("axbench", "vector"): _paper_split(18, 4, 1, 0.08, 0.6, 4, 0.5, ADD, vector=True),
}
_QWEN_SPLIT = {
    ("psychopathy", "local_weight"): _paper_split(1, 4, 2, 0.01, 0.5, 6, 0.4, ADD),
    ("psychopathy", "lora"): _paper_split(1, 4, 2, 0.01, 0.5, 6, 0.4, ADD_SUB),
    ("psychopathy", "vector"): _paper_split(2, 4, 1, 0.08, 0.6, 4, 0.5, ADD_SUB, vector=True),
    ("powerseeking", "local_weight"): _paper_split(2, 2, 2, 0.01, 0.6, 5, 0.5, ADD),
    ("powerseeking", "lora"): _paper_split(2, 2, 2, 0.01, 0.5, 4, 0.5, ADD_SUB),
    ("powerseeking", "vector"): _paper_split(2, 4, 1, 0.08, 0.6, 5, 0.5, ADD_SUB, vector=True),
    ("axbench", "local_weight"): _paper_split(12, 2, 2, 0.04, 0.3, 3.5, 0.6, ADD),
    ("axbench", "lora"): _paper_split(12, 2, 2, 0.04, 0.5, 5, 0.45, ADD),
    ("axbench", "vector"): _paper_split(18, 2, 2, 0.08, 0.6, 6, 0.5, ADD, vector=True),
}
# The cpu profile: the same objective and pair types, fewer steps, and step sizes for a model whose
# residual stream is far smaller than Gemma-2's.
_CPU_SPLIT = {
    (task, form): TrainConfig(
        epochs=2, batch_size=8, grad_accum=1, lr={"vector": 0.01, "lora": 0.01, "local_weight": 0.002}[form],
        multipliers=_VECTOR_MULTIPLIERS if form == "vector" else _WEIGHT_MULTIPLIERS,
        pair_types=ADD_SUB if form != "local_weight" else ADD,
    )
    for task in ("psychopathy", "powerseeking", "axbench")
    for form in ("vector", "lora", "local_weight")
}


@dataclass(frozen=True)
class EngineSettings:
    """How the forward engine cuts its work: tokens per forward, tokens and pairs per packed row.

    `token_budget` bounds rows x width x multipliers of one upper-pass forward; None lets the
    engine pick one for the device (`engine.device_token_budget`). Batching changes results only
    at rounding level, but it is part of every cache key all the same.
    """

    token_budget: int | None = None
    row_tokens: int = 2048  # attention over a packed row grows with its square
    pairs_per_row: int = 32
    pad_to: int = 1  # row widths rounded up to a multiple: repeated shapes spare a GPU new kernel plans

    def __post_init__(self) -> None:
        for name in ("row_tokens", "pairs_per_row", "pad_to"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EngineSettings.{name} must be a positive int, got {value!r}")
        budget = self.token_budget
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise ValueError(f"EngineSettings.token_budget must be a positive int or None, got {budget!r}")
        if budget is not None and budget < self.row_tokens:
            raise ValueError(f"EngineSettings.token_budget ({budget}) is smaller than one packed row "
                             f"(row_tokens = {self.row_tokens}): raise the budget or lower row_tokens")


@dataclass(frozen=True)
class Profile:
    """Everything a chapter needs to know about where and at what scale it runs."""

    name: str
    model: str
    layer: int
    dtype: str
    device: str
    splits: dict[str, SplitSizes]
    vector_grid: tuple[float, ...]  # multipliers for trained vectors (the reference trains with 2..20)
    weight_grid: tuple[float, ...]  # multipliers for LoRA and local weight (trained with 0.2..2.0)
    relative_grid: tuple[float, ...]  # ‖mΔb‖ in units of the median residual norm (for DiffMean)
    lora_rank: int
    axbench_concepts: tuple[int, ...] = tuple(range(10))
    max_answer_tokens: int | None = None  # truncate long answers (AxBench) before scoring
    generation_tokens: int = 128  # new tokens for A_n of AxBench and for steered examples
    engine: EngineSettings = EngineSettings()  # how sweeps, captures and DiffMean batch their work
    seed: int = 42
    split_configs: dict[tuple[str, str], TrainConfig] = field(default_factory=dict)
    description: str = ""
    paper_setup: bool = False
    extras: dict[str, object] = field(default_factory=dict)
    attn_implementation: str | None = None  # passed to transformers when set ("eager", "sdpa", ...)

    def rerun_hint(self) -> str:
        """How a reader re-runs a chapter with the paper's models."""
        return (
            "On a GPU with a Hugging Face connection: "
            "`SPLITLIB_PROFILE=gemma-2-9b-it make book` (or `qwen2.5-7b-it`)."
        )


def _symmetric(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(sorted({-v for v in values} | {0.0} | set(values)))


_PAPER_SPLITS = {
    "psychopathy": SplitSizes(500, 100),
    "powerseeking": SplitSizes(500, 200),
    "axbench": SplitSizes(64, 8),
}
# The reference configs train vectors with multipliers 2..20 and weights with 0.2..2.0 (digest §5.3);
# sweeps reach past them so the convergence region is visible.
_PAPER_VECTOR_GRID = _symmetric((1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40))
_PAPER_RELATIVE_GRID = _symmetric((0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0))
_PAPER_WEIGHT_GRID = _symmetric((0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0))

def _paper_profile(name: str, model: str, layer: int, split_configs: dict, title: str,
                   attn_implementation: str | None = None) -> Profile:
    """One of the paper's setups: bf16 on a GPU, the paper's split sizes and grids."""
    return Profile(
        name=name, model=model, layer=layer, dtype="bfloat16", device="cuda", splits=dict(_PAPER_SPLITS),
        vector_grid=_PAPER_VECTOR_GRID, weight_grid=_PAPER_WEIGHT_GRID, relative_grid=_PAPER_RELATIVE_GRID,
        lora_rank=4, split_configs=split_configs, paper_setup=True,
        engine=EngineSettings(pairs_per_row=16, pad_to=64),
        description=f"The paper's {title} setup: layer {layer}, bf16, paper split sizes.",
        attn_implementation=attn_implementation,
    )


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        model=EMBEDDED_MODEL,
        layer=15,  # a middle layer of 30; the largest preference slope in the probe (embedded-model.md)
        dtype="float32",
        device="cpu",
        splits={
            "psychopathy": SplitSizes(96, 48),
            "powerseeking": SplitSizes(64, 32),
            "axbench": SplitSizes(8, 4),
        },
        vector_grid=_symmetric((1, 2, 4, 8, 12, 16, 20, 30)),
        weight_grid=_symmetric((0.25, 0.5, 1, 1.5, 2, 3, 4)),
        relative_grid=_symmetric((0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)),
        lora_rank=4,
        axbench_concepts=(0, 1),
        max_answer_tokens=48,
        generation_tokens=48,
        engine=EngineSettings(pairs_per_row=32),
        split_configs=_CPU_SPLIT,
        description="The embedded SmolLM2-135M-Instruct on a CPU, at sizes that fit CI.",
    ),
    # transformers 5.24 refuses sdpa for Gemma-2 (eager keeps its attention soft-capping); Qwen-2.5 runs sdpa.
    "gemma-2-9b-it": _paper_profile("gemma-2-9b-it", "google/gemma-2-9b-it", 20, _GEMMA_SPLIT, "Gemma-2-9B-IT",
                                    attn_implementation="eager"),
    "qwen2.5-7b-it": _paper_profile("qwen2.5-7b-it", "Qwen/Qwen2.5-7B-Instruct", 14, _QWEN_SPLIT,
                                    "Qwen-2.5-7B-Instruct", attn_implementation="sdpa"),
}


def get_profile(name: str | None = None) -> Profile:
    """The named profile, else the one `SPLITLIB_PROFILE` names, else `cpu`."""
    chosen = name or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    try:
        return PROFILES[chosen]
    except KeyError:
        source = "argument" if name else f"${PROFILE_ENV}"
        raise ValueError(
            f"unknown profile {chosen!r} (from the {source}); choose one of {sorted(PROFILES)}"
        ) from None
