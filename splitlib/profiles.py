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
    factors: tuple[float, ...]
    pair_types: tuple[str, ...] = ("add",)
    lambda_p: float = 1.0
    lambda_n: float = 0.5
    gamma: float = 5.0
    theta: float = 0.4
    dropout: float = 0.1
    max_grad_norm: float = 1.0
    reps_scale: float = 1.0


_WEIGHT_FACTORS = tuple(round(0.2 * k, 1) for k in range(1, 11))  # 0.2 ... 2.0
_VECTOR_FACTORS = tuple(float(2 * k) for k in range(1, 11))  # 2 ... 20


def _paper_split(epochs, batch, accum, lr, lambda_n, gamma, theta, pairs, vector=False) -> TrainConfig:
    return TrainConfig(epochs, batch, accum, lr, _VECTOR_FACTORS if vector else _WEIGHT_FACTORS,
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
        factors=_VECTOR_FACTORS if form == "vector" else _WEIGHT_FACTORS,
        pair_types=ADD_SUB if form != "local_weight" else ADD,
    )
    for task in ("psychopathy", "powerseeking", "axbench")
    for form in ("vector", "lora", "local_weight")
}


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
    batch_size: int = 16  # sequences per forward pass in sweeps
    seed: int = 42
    split_configs: dict[tuple[str, str], TrainConfig] = field(default_factory=dict)
    description: str = ""
    paper_setup: bool = False
    extras: dict[str, object] = field(default_factory=dict)

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
# The reference configs train vectors with factors 2..20 and weights with 0.2..2.0 (digest §5.3);
# sweeps reach past them so the convergence region is visible.
_PAPER_VECTOR_GRID = _symmetric((1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40))
_PAPER_RELATIVE_GRID = _symmetric((0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0))
_PAPER_WEIGHT_GRID = _symmetric((0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0))

def _paper_profile(name: str, model: str, layer: int, split_configs: dict, title: str) -> Profile:
    """One of the paper's setups: bf16 on a GPU, the paper's split sizes and grids."""
    return Profile(
        name=name, model=model, layer=layer, dtype="bfloat16", device="cuda", splits=dict(_PAPER_SPLITS),
        vector_grid=_PAPER_VECTOR_GRID, weight_grid=_PAPER_WEIGHT_GRID, relative_grid=_PAPER_RELATIVE_GRID,
        lora_rank=4, split_configs=split_configs, paper_setup=True,
        description=f"The paper's {title} setup: layer {layer}, bf16, paper split sizes.",
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
        batch_size=32,
        split_configs=_CPU_SPLIT,
        description="The embedded SmolLM2-135M-Instruct on a CPU, at sizes that fit CI.",
    ),
    "gemma-2-9b-it": _paper_profile("gemma-2-9b-it", "google/gemma-2-9b-it", 20, _GEMMA_SPLIT, "Gemma-2-9B-IT"),
    "qwen2.5-7b-it": _paper_profile("qwen2.5-7b-it", "Qwen/Qwen2.5-7B-Instruct", 14, _QWEN_SPLIT, "Qwen-2.5-7B-Instruct"),
}


def run_box(profile: Profile, model_info: object, data: str) -> object:
    """The box at the top of every chapter: what rendered it and how to re-run it at paper scale.

    Returned as MyST Markdown, which the book renders as an admonition.
    """
    from IPython.display import Markdown

    scale = "the paper's setup" if profile.paper_setup else "a small model at CI sizes: shapes, not magnitudes"
    return Markdown(
        "```{admonition} How this page was rendered\n"
        ":class: note\n\n"
        f"- **Profile:** `{profile.name}`: {profile.description}\n"
        f"- **Model:** `{profile.model}` ({model_info.architecture}, {model_info.n_layers} layers, "
        f"hidden size {model_info.hidden_size}, {model_info.n_parameters / 1e6:.1f} M parameters, "
        f"{model_info.dtype} on {model_info.device})\n"
        f"- **Intervention layer:** {profile.layer}\n"
        f"- **Data:** {data}\n"
        f"- **Scale:** {scale}\n\n"
        f"To re-run at paper scale: {profile.rerun_hint()}\n"
        "```"
    )


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
