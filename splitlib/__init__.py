"""splitlib: the computations behind the book "Why steering works".

One module per idea: `profiles` (which model, layer and sizes), `models` (loading and generation),
`interventions` (the unified update of Eq. 4 in three forms), `data` (polarity pairs and splits),
`scoring` (losses and the two log-odds), `engine` (the two-part forward: packed rows, batched
multipliers, capture), `sweep` (the m-sweep table), `train` (SFT, RePS, SPLIT and DiffMean),
`search` (the cpu profile's training hyperparameters, chosen on the training split), `fit`
(rational-quadratic decay fits), `regions` (chapter 4's fits of every update and their tables),
`geometry` (the activation manifold, measured), `manifold`
(those measures set against utility, per update), `evaluation` (one m per update and the
updates compared there), `generations` (steered answers for open-ended evaluation), `judge`
(judge models scoring them), `attention`
(masks for packed rows), `cache` (atomic, content-keyed artifacts), `checks` (the argument checks
every entry point shares), `plots` (the book's figures), `build` (executing and rendering the book),
`browse` (the rendered pages, checked in headless Chromium), `interop` (reference-code files,
llama.cpp control vectors, peft adapters, merged checkpoints, provenance), `cli` (the `splitlib`
command line) and `bench` (speed measurements).
"""
import warnings

# Two harmless warnings that would otherwise print into every executed chapter: tqdm's note that
# ipywidgets is absent (text progress bars are what we want) and a transformers deprecation that
# peft triggers.
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

from . import book, data, evaluation, fit, geometry, interop, judge, manifold, plots, regions  # noqa: E402
from .cache import cache_root
from .data import TASKS, DataError, PolarityPair, TaskData, load_pairs, load_task
from .generations import evaluation_generations
from .interventions import (
    FORMS,
    Applied,
    Intervention,
    calibrate,
    measure_delta_h,
    parameter_table,
    record_layer,
)
from .models import ModelInfo, decoder_layers, describe_model, down_projection, encode_chat, generate, load_model
from .profiles import PROFILES, EngineSettings, Profile, get_profile
from .scoring import choose_multiplier, summarise
from .sweep import naive_sweep, precision_noise, run_sweep
from .train import (
    METHOD_FORMS,
    METHODS,
    config_for,
    diffmean,
    evaluation_grid,
    evaluation_multipliers,
    evaluation_sweeps,
    residual_norm,
    train_all,
    train_for_profile,
    train_intervention,
)

__all__ = [
    "FORMS",
    "PROFILES",
    "TASKS",
    "METHODS",
    "METHOD_FORMS",
    "choose_multiplier",
    "config_for",
    "evaluation_grid",
    "evaluation_multipliers",
    "EngineSettings",
    "evaluation_sweeps",
    "train_all",
    "train_for_profile",
    "train_intervention",
    "PolarityPair",
    "TaskData",
    "data",
    "fit",
    "geometry",
    "diffmean",
    "load_task",
    "load_pairs",
    "DataError",
    "interop",
    "regions",
    "search",
    "seeds",
    "judge",
    "evaluation_generations",
    "evaluation",
    "manifold",
    "naive_sweep",
    "precision_noise",
    "residual_norm",
    "run_sweep",
    "summarise",
    "Applied",
    "Intervention",
    "ModelInfo",
    "Profile",
    "cache_root",
    "calibrate",
    "decoder_layers",
    "describe_model",
    "down_projection",
    "encode_chat",
    "generate",
    "get_profile",
    "load_model",
    "measure_delta_h",
    "parameter_table",
    "book",
    "plots",
    "record_layer",
]
__version__ = "0.1.0"

# Run as `python -m splitlib.search` and `python -m splitlib.seeds`: imported here on first use, not
# above, or runpy would warn that the module it is about to run was already imported.
_RUNNABLE = ("search", "seeds")


def __getattr__(name: str) -> object:
    if name in _RUNNABLE:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
