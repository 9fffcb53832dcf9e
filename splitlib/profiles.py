"""Run profiles: one name fixes the model, layer, dtype, device, data sizes and grids.

`SPLITLIB_PROFILE` picks one (default `cpu`); chapters read it through `get_profile()` so the
same code runs on a laptop CPU with the embedded model and on a GPU with the paper's models.
It may also name a TOML profile file that inherits a built-in profile and overrides any of its
fields (`profile_from_file`), e.g. your own model from a local folder:

    inherit = "qwen2.5-7b-it"        # default "cpu"
    model = "/models/my-finetune"    # a hub id or a local folder
    layer = 12
    unset = ["max_answer_tokens"]    # optional fields back to None (TOML has no null)
    [load_options]                   # passed to from_pretrained
    device_map = "auto"
    [engine]
    token_budget = 65536
    [split_configs.psychopathy.vector]
    lr = 0.05
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .checks import check_choice, check_grid, check_int, check_number, check_positive_int, check_type, check_unique

PROFILE_ENV = "SPLITLIB_PROFILE"
DEFAULT_PROFILE = "cpu"
EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where `make` runs; relative profile paths fall back to it
# load_model's own arguments, which a profile sets through its fields rather than load_options.
RESERVED_LOAD_OPTIONS = ("dtype", "torch_dtype", "attn_implementation", "pretrained_model_name_or_path")


class DeviceError(ValueError):
    """A model or profile set to run on a device this machine does not have (see models.check_device)."""


class ProfileError(ValueError):
    """A profile that cannot be resolved: an unknown name, or a profile file that is missing, is
    not TOML, or sets an unknown field or a value of the wrong type (the message names the file,
    the field and what was expected)."""


@dataclass(frozen=True)
class SplitSizes:
    """Train/test sizes of one task (AxBench sizes are per concept)."""

    train: int
    test: int

    def __post_init__(self) -> None:
        check_positive_int("SplitSizes.train", self.train)
        check_positive_int("SplitSizes.test", self.test)


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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            check_positive_int(f"TrainConfig.{name}", getattr(self, name))
        for name in ("lr", "max_grad_norm", "reps_scale"):
            check_number(f"TrainConfig.{name}", getattr(self, name), 0, open_low=True)
        for name in ("lambda_p", "lambda_n", "gamma"):
            check_number(f"TrainConfig.{name}", getattr(self, name), 0)
        check_number("TrainConfig.theta", self.theta)
        check_number("TrainConfig.dropout", self.dropout, 0, 1, open_high=True)
        if any(m <= 0 for m in check_grid("TrainConfig.multipliers", self.multipliers)):
            raise ValueError(f"TrainConfig.multipliers are the |m| drawn per example and must be > 0, "
                             f"got {list(self.multipliers)}")
        check_pair_types(self.pair_types)


PAIR_TYPES = ("add", "sub")


def check_pair_types(pair_types: object) -> tuple[str, ...]:
    """A non-empty tuple of distinct pair types, each "add" or "sub"."""
    if isinstance(pair_types, str) or not isinstance(pair_types, tuple | list):
        raise TypeError(f"TrainConfig.pair_types must be a tuple of {' / '.join(PAIR_TYPES)}, "
                        f"got {type(pair_types).__name__} {pair_types!r}")
    if not pair_types:
        raise ValueError(f"TrainConfig.pair_types is empty; use some of {', '.join(PAIR_TYPES)}")
    for kind in pair_types:
        check_choice("TrainConfig.pair_types entry", kind, PAIR_TYPES)
    check_unique("TrainConfig.pair_types", pair_types)
    return tuple(pair_types)


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
# The cpu profile: the same objective, the pair types of the Gemma-2 reference config per task and
# form (AxBench and PowerSeeking train "add" examples only), and the learning rate, epochs and batch size
# per form that `splitlib.search` chose on Psychopathy's training split (its record ships beside
# this file; `python -m splitlib.search` writes it again). Without a record: the values before the search.
SEARCHED_METHODS = ("split", "sft", "reps")  # the trained methods `python -m splitlib.search` can tune


def search_record_path(method: str) -> Path:
    """Where the cpu profile's search record for `method` ships (`python -m splitlib.search --method`)."""
    check_choice("method", method, SEARCHED_METHODS)
    name = "cpu-training-search.json" if method == "split" else f"cpu-training-search-{method}.json"
    return Path(__file__).resolve().parent / "records" / name


SEARCH_RECORD = search_record_path("split")
_CPU_BEFORE_SEARCH = {form: {"lr": lr, "epochs": 2, "batch_size": 8}
                      for form, lr in (("vector", 0.01), ("lora", 0.01), ("local_weight", 0.002))}


def searched_schedules(path: Path = SEARCH_RECORD) -> dict[str, dict[str, Any]]:
    """The search's chosen lr, epochs and batch size per form, or the pre-search values without a record."""
    if not path.exists():
        return _CPU_BEFORE_SEARCH
    chosen = json.loads(path.read_text()).get("chosen")
    if not isinstance(chosen, dict) or set(chosen) != set(_CPU_BEFORE_SEARCH):
        raise ProfileError(f"{path} holds no chosen schedule for every form ({', '.join(_CPU_BEFORE_SEARCH)})")
    return chosen


@dataclass(frozen=True)
class Schedule:
    """A method's own learning rate, epochs and batch size in one form, in place of SPLIT's
    (the cpu profile's per-method search); gradients are not accumulated."""

    lr: float
    epochs: int
    batch_size: int

    def __post_init__(self) -> None:
        check_number("Schedule.lr", self.lr, 0, open_low=True)
        check_positive_int("Schedule.epochs", self.epochs)
        check_positive_int("Schedule.batch_size", self.batch_size)


def method_schedules() -> dict[tuple[str, str], Schedule]:
    """SFT's and RePS's schedules per (method, form) where their own search record ships; the
    forms a record lacks keep SPLIT's."""
    schedules = {}
    for method in SEARCHED_METHODS[1:]:
        path = search_record_path(method)
        if not path.exists():
            continue
        chosen = json.loads(path.read_text()).get("chosen")
        if not isinstance(chosen, dict) or not chosen:
            raise ProfileError(f"{path} holds no chosen schedule")
        for form, schedule in chosen.items():
            schedules[(method, form)] = Schedule(float(schedule["lr"]), int(schedule["epochs"]),
                                                 int(schedule["batch_size"]))
    return schedules


_CPU_SPLIT = {
    (task, form): TrainConfig(
        epochs=int(schedule["epochs"]), batch_size=int(schedule["batch_size"]), grad_accum=1,
        lr=float(schedule["lr"]), multipliers=_VECTOR_MULTIPLIERS if form == "vector" else _WEIGHT_MULTIPLIERS,
        pair_types=_GEMMA_SPLIT[(task, form)].pair_types,
    )
    for task in ("psychopathy", "powerseeking", "axbench")
    for form, schedule in searched_schedules().items()
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
            check_positive_int(f"EngineSettings.{name}", getattr(self, name))
        budget = check_positive_int("EngineSettings.token_budget", self.token_budget, optional=True)
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
    evaluation_questions: int | None = None  # test questions generated per update for a judge (None: all)
    # the tasks chapter 5 evaluates in the layout of the paper's Table 3 (train, sweep, choose m, generate)
    evaluation_tasks: tuple[str, ...] = ("psychopathy", "powerseeking", "axbench")
    engine: EngineSettings = EngineSettings()  # how sweeps, captures and DiffMean batch their work
    seed: int = 42
    split_configs: dict[tuple[str, str], TrainConfig] = field(default_factory=dict)
    # (method, form): SFT's or RePS's own schedule (its own search), in place of SPLIT's config's
    method_schedules: dict[tuple[str, str], Schedule] = field(default_factory=dict)
    description: str = ""
    paper_setup: bool = False
    extras: dict[str, object] = field(default_factory=dict)
    attn_implementation: str | None = None  # passed to transformers when set ("eager", "sdpa", ...)
    load_options: dict[str, object] = field(default_factory=dict)  # more from_pretrained arguments
    cell_timeout: int = 900  # seconds one chapter cell may run (nbmake and `splitlib chapter`)

    def __post_init__(self) -> None:
        check_int("Profile.layer", self.layer, low=0)
        check_positive_int("Profile.cell_timeout", self.cell_timeout)
        check_type("Profile.load_options", self.load_options, dict)
        reserved = sorted(set(self.load_options) & set(RESERVED_LOAD_OPTIONS))
        if reserved:
            raise ValueError(f"Profile.load_options may not set {reserved}: set the profile's own dtype and "
                             "attn_implementation fields instead")
        check_positive_int("Profile.lora_rank", self.lora_rank)
        check_positive_int("Profile.max_answer_tokens", self.max_answer_tokens, optional=True)
        check_positive_int("Profile.generation_tokens", self.generation_tokens)
        check_positive_int("Profile.evaluation_questions", self.evaluation_questions, optional=True)
        check_unique("Profile.evaluation_tasks", self.evaluation_tasks)
        for task in self.evaluation_tasks:
            check_choice("Profile.evaluation_tasks entry", task, self.splits)
        check_int("Profile.seed", self.seed)
        trained_forms = sorted({f for _, f in self.split_configs})
        for method, form in self.method_schedules:
            check_choice("Profile.method_schedules method", method, SEARCHED_METHODS[1:])
            if form not in trained_forms:  # a schedule only replaces part of a SPLIT config
                raise ValueError(f"Profile.method_schedules has a schedule for {method!r} in form {form!r}, "
                                 f"but Profile.split_configs has no config in that form "
                                 f"(its forms: {', '.join(trained_forms) or 'none'})")
            check_type(f"Profile.method_schedules[{method!r}, {form!r}]", self.method_schedules[method, form], Schedule)
        check_type("Profile.engine", self.engine, EngineSettings)
        for name in ("vector_grid", "weight_grid", "relative_grid"):
            check_grid(f"Profile.{name}", getattr(self, name))

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
        attn_implementation=attn_implementation, cell_timeout=7200,
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
        max_answer_tokens=16,  # AxBench's answers, scored on their first 16 tokens: CI's time budget
        generation_tokens=32,
        evaluation_questions=8,  # CI's budget: the paper profiles generate for every test question
        # PowerSeeking's prompts are ~3x Psychopathy's: training and sweeping it would double CI's time
        evaluation_tasks=("psychopathy", "axbench"),
        cell_timeout=1800,  # cold, chapter 5 trains and sweeps AxBench's ten updates in one cell
        # short rows: on a CPU the dense attention over a packed row costs more than the rows it saves
        engine=EngineSettings(pairs_per_row=32, row_tokens=512),
        split_configs=_CPU_SPLIT,
        method_schedules=method_schedules(),
        description="The embedded SmolLM2-135M-Instruct on a CPU, at sizes that fit CI.",
    ),
    # transformers 5.24 refuses sdpa for Gemma-2 (eager keeps its attention soft-capping); Qwen-2.5 runs sdpa.
    "gemma-2-9b-it": _paper_profile("gemma-2-9b-it", "google/gemma-2-9b-it", 20, _GEMMA_SPLIT, "Gemma-2-9B-IT",
                                    attn_implementation="eager"),
    "qwen2.5-7b-it": _paper_profile("qwen2.5-7b-it", "Qwen/Qwen2.5-7B-Instruct", 14, _QWEN_SPLIT,
                                    "Qwen-2.5-7B-Instruct", attn_implementation="sdpa"),
}


def check_profile(profile: object, name: str = "profile") -> Profile:
    """`profile` if it is a Profile, else a TypeError (with the fix for a profile's name)."""
    hint = f"; pass splitlib.get_profile({profile!r})" if isinstance(profile, str) else ""
    return check_type(name, profile, Profile, hint)


def get_profile(name: str | os.PathLike | None = None) -> Profile:
    """The named profile, else the one `SPLITLIB_PROFILE` names, else `cpu`. A name ending in
    .toml or containing a slash is a profile file (`profile_from_file`)."""
    if name is not None and not isinstance(name, str | os.PathLike):
        raise TypeError("profile name must be a profile's name or a profile file's path, "
                        f"got {type(name).__name__} {name!r}")
    chosen = os.fspath(name or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE)
    if is_profile_file(chosen):
        return profile_from_file(profile_path(chosen))
    try:
        return PROFILES[chosen]
    except KeyError:
        source = "argument" if name else f"${PROFILE_ENV}"
        raise ProfileError(
            f"unknown profile {chosen!r} (from the {source}); choose one of {sorted(PROFILES)} "
            "or give the path of a .toml profile file"
        ) from None


# ----- profiles from files ----------------------------------------------------------------------------
_FILE_ONLY_KEYS = ("inherit", "unset")  # keys of a profile file that are not fields of Profile
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def is_profile_file(spec: str) -> bool:
    """Whether a profile spec names a file rather than a built-in profile."""
    return spec.endswith(".toml") or "/" in spec or os.sep in spec


def profile_path(spec: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """The profile file `spec` names, absolute: relative to `relative_to` (an inheriting file's
    folder) if given, else to the working directory, else to the project root (where `make` runs,
    so a relative $SPLITLIB_PROFILE still resolves inside a chapter run from its own folder)."""
    path = Path(spec).expanduser()
    if path.is_absolute():
        candidates = [path]
    elif relative_to is not None:
        candidates = [relative_to / path]
    else:
        candidates = [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ProfileError(f"profile file {os.fspath(spec)!r} not found (looked for {', '.join(map(str, candidates))})")


class _Bad(Exception):
    """A field of a profile file that is wrong, before the file's name is put in front."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name!r} {problem}" if field_name else problem)


class _Unset:
    """What `unset = [...]` puts in place of a field's value: None, for an optional field."""


_UNSET = _Unset()


def profile_from_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> Profile:
    """The profile a TOML file describes: the profile it inherits (key `inherit`, a built-in name
    or another file, default "cpu") with the file's fields overriding its own. Tables merge into
    the inherited value ([engine], [splits.<task>], [split_configs.<task>.<form>], [load_options],
    [extras]); `unset` lists optional fields (dotted for nested ones) to set to None. The profile is
    named after the file unless it sets `name`. Any problem is a ProfileError naming the file,
    the field and what was expected."""
    path = Path(path).resolve()
    if path in _seen:
        raise ProfileError(f"{path}: inherits itself (through {' -> '.join(str(p) for p in _seen)})")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ProfileError(f"cannot read the profile file {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ProfileError(f"{path} is not valid TOML: {error}") from None
    try:
        base = _inherited(data.pop("inherit", DEFAULT_PROFILE), path, _seen)
        _apply_unset(data, data.pop("unset", []))
        data.setdefault("name", path.stem)
        data.setdefault("description", f"{base.description} Changed by {path.name}: "
                                       f"{', '.join(sorted(k for k in data if k != 'name'))}.")
        if "splits" in data:  # other split sizes are not the paper's setup, unless the file says they are
            data.setdefault("paper_setup", False)
        profile = _record(Profile, _table(data, ""), base, "")
    except _Bad as bad:
        raise ProfileError(f"{path}: {bad}") from None
    assert isinstance(profile, Profile)
    if not _NAME.fullmatch(profile.name) or profile.name in PROFILES:
        raise ProfileError(f"{path}: field 'name' is {profile.name!r}: a profile file needs a name of letters, "
                           f"digits, '.', '_' or '-' that is not a built-in profile's ({', '.join(PROFILES)}); "
                           "rename the file or set name = \"...\"")
    return profile


def _inherited(spec: object, path: Path, seen: tuple[Path, ...]) -> Profile:
    if not isinstance(spec, str):
        raise _Bad("inherit", f"must be a built-in profile's name or a profile file, got {_shown(spec)}")
    if is_profile_file(spec):
        return profile_from_file(profile_path(spec, relative_to=path.parent), (*seen, path))
    if spec not in PROFILES:
        raise _Bad("inherit", f"names no built-in profile: {spec!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[spec]


def _apply_unset(data: dict[str, Any], names: object) -> None:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _Bad("unset", f"must be an array of field names, got {_shown(names)}")
    for dotted in names:
        *parents, leaf = dotted.split(".")
        table = data
        for part in parents:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise _Bad("unset", f"names {dotted!r}, but {part!r} is not a table")
        if leaf in table:
            raise _Bad(dotted, "is both set and listed in unset")
        table[leaf] = _UNSET


def _value(value: object, hint: Any, base: object, name: str) -> object:
    """`value` from a profile file as the type `hint`; a table merges into `base`, the inherited value."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is _UNSET and type(None) in args:
            return None
        return _value(value, next(a for a in args if a is not type(None)), base, name)
    if value is _UNSET:
        raise _Bad(name, "cannot be unset: it is not optional")
    if dataclasses.is_dataclass(hint):
        return _record(hint, _table(value, name), base, name)
    if origin is dict:
        return _mapping(_table(value, name), args, base, name)
    if origin is tuple:
        if not isinstance(value, list):
            raise _Bad(name, f"must be an array of {_EXPECTED[args[0]].split(' ', 1)[1]}s, got {_shown(value)}")
        return tuple(_value(item, args[0], None, f"{name}[{i}]") for i, item in enumerate(value))
    if hint is object:  # free-form (load_options, extras): as TOML gives it
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _Bad(name, f"must be {_EXPECTED[hint]}, got {_shown(value)}")
    return value


def _table(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(name, f"must be a table, got {_shown(value)}")
    return value


def _mapping(table: dict[str, Any], args: tuple, base: object, name: str) -> dict:
    """A dict field: each entry merged into the inherited one; split_configs' (task, form) keys are
    two levels of tables, [split_configs.<task>.<form>]."""
    merged = dict(base) if isinstance(base, dict) else {}
    key_hint, item_hint = args
    for key, item in table.items():
        if key_hint == tuple[str, str]:
            for inner, config in _table(item, f"{name}.{key}").items():
                merged[(key, inner)] = _value(config, item_hint, merged.get((key, inner)), f"{name}.{key}.{inner}")
        else:
            merged[key] = _value(item, item_hint, merged.get(key), f"{name}.{key}")
    return merged


def _record(cls: Any, table: dict[str, Any], base: object, name: str) -> object:
    """A dataclass (Profile, EngineSettings, SplitSizes, TrainConfig) from a table, over `base`."""
    hints = get_type_hints(cls)
    values = {}
    for key, item in table.items():
        dotted = f"{name}.{key}" if name else key
        if key not in hints:
            known = list(hints) + (list(_FILE_ONLY_KEYS) if cls is Profile else [])
            close = difflib.get_close_matches(key, known, n=1)
            raise _Bad(dotted, f"is not a field of {cls.__name__}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                               f"the fields are {', '.join(known)}")
        values[key] = _value(item, hints[key], getattr(base, key, None), dotted)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)  # type: ignore[type-var]
    except (TypeError, ValueError) as error:
        raise _Bad(name, f"is invalid: {error}" if name else str(error)) from None


def _shown(value: object) -> str:
    kind = next((label for t, label in _TOML_TYPES.items() if isinstance(value, t)), type(value).__name__)
    return f"{kind} {value!r}"


def profile_toml(profile: Profile) -> str:
    """The profile as a profile file that sets every field: `splitlib profiles show` prints it,
    build keys executed chapters on it, and reading it back gives the same profile (named after
    the file)."""
    leaves = [(path, value) for path, value in _leaves(profile, ()) if path != ("name",)]
    unset = [".".join(path) for path, value in leaves if value is None]
    lines = [f"# profile {profile.name!r}, every field resolved"]
    if profile.name in PROFILES:
        lines.append(f"inherit = {_toml(profile.name)}")
    tables: dict[tuple[str, ...], list[str]] = {}
    for path, value in leaves:
        if value is not None:
            tables.setdefault(path[:-1], []).append(f"{_toml_key(path[-1])} = {_toml(value)}")
    lines += tables.pop((), [])
    if unset:
        lines.append(f"unset = {_toml(unset)}")
    for parent, entries in tables.items():
        lines += ["", f"[{'.'.join(map(_toml_key, parent))}]", *entries]
    return "\n".join(lines) + "\n"


def _leaves(value: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    """(key path, value) of every scalar or array inside a profile, tables flattened in order."""
    if dataclasses.is_dataclass(value):
        items: list[tuple[tuple[str, ...], object]] = [((f.name,), getattr(value, f.name))
                                                       for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        items = [(tuple(key) if isinstance(key, tuple) else (str(key),), item)
                 for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))]
    else:
        yield path, value
        return
    for keys, item in sorted(items, key=lambda entry: isinstance(entry[1], dict) or dataclasses.is_dataclass(entry[1])):
        yield from _leaves(item, path + keys)  # a table's own values before its sub-tables, as TOML needs


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"a profile value of type {type(value).__name__} has no TOML form: {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
