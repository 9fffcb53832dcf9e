"""splitlib: the computations behind the book "Why steering works".

One module per idea: `profiles` (which model, layer and sizes), `models` (loading), `interventions`
(the unified update of Eq. 4 in three forms), `cache` (atomic, content-keyed artifacts), `plots`,
and `build` (executing and rendering the book).
"""
from .cache import cache_root
from .interventions import FORMS, Applied, Intervention, parameter_table, record_layer
from .models import ModelInfo, decoder_layers, describe_model, down_projection, load_model
from .profiles import PROFILES, Profile, get_profile

__all__ = [
    "FORMS",
    "PROFILES",
    "Applied",
    "Intervention",
    "ModelInfo",
    "Profile",
    "cache_root",
    "decoder_layers",
    "describe_model",
    "down_projection",
    "get_profile",
    "load_model",
    "parameter_table",
    "record_layer",
]
__version__ = "0.1.0"
