"""splitlib: the computations behind the book "Why steering works".

One module per idea: `profiles` (which model, layer and sizes), `models` (loading), `interventions`
(the unified update of Eq. 4 in three forms), `cache` (atomic, content-keyed artifacts), `plots`
(the book's figures) and `build` (executing and rendering the book).
"""
import warnings

# Two harmless warnings that would otherwise print into every executed chapter: tqdm's note that
# ipywidgets is absent (text progress bars are what we want) and a transformers deprecation that
# peft triggers.
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

from . import plots  # noqa: E402
from .cache import cache_root
from .interventions import (
    FORMS,
    Applied,
    Intervention,
    calibrate,
    measure_delta_h,
    parameter_table,
    record_layer,
)
from .models import ModelInfo, decoder_layers, describe_model, down_projection, encode_chat, load_model
from .profiles import PROFILES, Profile, get_profile, run_box

__all__ = [
    "FORMS",
    "PROFILES",
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
    "get_profile",
    "load_model",
    "measure_delta_h",
    "parameter_table",
    "plots",
    "record_layer",
    "run_box",
]
__version__ = "0.1.0"
