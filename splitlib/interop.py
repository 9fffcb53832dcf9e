"""Interventions in and out of other tools, and the provenance stored inside every artifact.

- `load_reference` / `reference_files`: the reference code's trained files (zjunlp/EasyEdit `steer/`,
  digest §7) as `Intervention`s, with the placement differences the book documents stated on load;
- `to_gguf` / `read_gguf` / `load_gguf`: a vector as a llama.cpp control vector;
- `save_peft` (on `Intervention`) names the real base model: `base_model_id`;
- `merged_checkpoint`: a weight update merged into a copy of the weights at one multiplier, saved
  with `save_pretrained`, loadable by any Hugging Face tool;
- `provenance`, `with_provenance`, `read_provenance`: model, layer, data and code version inside
  parquet (schema metadata), safetensors (header metadata) and GGUF (a KV) files;
- `export`: one entry point for the formats, for a command line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .checks import check_choice, check_number
from .interventions import FORMS, Intervention, check_intervention
from .models import as_causal_lm, decoder_layers, down_projection
from .provenance import (
    PROVENANCE_KEY,
    _encoded,
    model_name,
    provenance,
    safetensors_metadata,
)

if TYPE_CHECKING:
    import numpy as np

def _intervention_fields(intervention: Intervention, model: nn.Module | None, **extra: Any) -> dict[str, Any]:
    """An intervention's own provenance (a loaded or reference one has it), its form and layer, the live model."""
    fields = {**getattr(intervention, "provenance", {}), "form": intervention.form, "layer": intervention.layer}
    if model is not None:
        fields["model"] = model_name(model)
    return {**fields, **extra}


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance stored in a .parquet, .safetensors or .gguf file; a ValueError if it holds none."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY.encode())
        text = raw.decode() if raw is not None else None
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            text = (handle.metadata() or {}).get(PROVENANCE_KEY)
    elif suffix == ".gguf":
        text = read_gguf(path)[1].get(PROVENANCE_KEY)
    else:
        raise ValueError(f"{path}: provenance is stored in .parquet, .safetensors and .gguf files only")
    if text is None:
        raise ValueError(f"{path} holds no splitlib provenance (no {PROVENANCE_KEY!r} metadata)")
    return json.loads(text)


def stamp_safetensors(path: str | os.PathLike, fields: Mapping[str, Any]) -> Path:
    """Add `provenance(**fields)` to the header metadata of a safetensors file written by another tool
    (e.g. `save_pretrained`), rewriting the header and copying the tensor bytes unchanged."""
    path = Path(path)
    with open(path, "rb") as source:
        (length,) = struct.unpack("<Q", source.read(8))
        header = json.loads(source.read(length))
        header["__metadata__"] = {**header.get("__metadata__", {}), **safetensors_metadata(fields)}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # keep the tensor data 8-byte aligned
        partial = path.with_name(f"{path.name}.provenance-tmp")
        try:
            with open(partial, "wb") as target:
                target.write(struct.pack("<Q", len(encoded)) + encoded)
                shutil.copyfileobj(source, target, 1 << 24)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


# ----- the base model an adapter names ------------------------------------------------------------------
# ----- the reference code's files -------------------------------------------------------------------------
REFERENCE_CODE = "zjunlp/EasyEdit steer/ (SPLIT reference code)"
_REFERENCE_FOLDER = re.compile(r"(?P<method>.+?)_(?P<form>vector|lora|local_weight)")
_REFERENCE_FILE = re.compile(r"layer_(?P<layer>\d+)\.pt")


class ReferencePlacementWarning(UserWarning):
    """A reference-code update that splitlib applies at a different place in this model than the reference does."""


def reference_files(root: str | os.PathLike) -> list[Path]:
    """Every `<method>_<form>/layer_<L>.pt` under `root`, e.g.
    `vectors/<model>/spilt/<dataset>/spilt_lora/layer_20.pt` (the reference spells SPLIT "spilt")."""
    return sorted(path for path in Path(root).rglob("layer_*.pt")
                  if _REFERENCE_FILE.fullmatch(path.name) and _REFERENCE_FOLDER.fullmatch(path.parent.name))


def load_reference(path: str | os.PathLike, *, layer: int | None = None, concept: int = 0,
                   model: nn.Module | None = None) -> Intervention:
    """An Intervention from a file the reference code trained: `<method>_<form>/layer_<L>.pt` (or
    that folder, with `layer` when it holds several files).

    The file layouts, as the reference's trainer saves them and its applier reads them
    (`generate_spilt.py`, `apply_spilt.py`); this is our reading of that code, not a documented format:
    - vector: a tensor, v = `proj.weight[0]` of shape (hidden,), or (n_concepts, hidden) stacked in
      training order, of which row `concept` is taken (the reference's applier indexes a (hidden,)
      file by concept too, which would give it one number; we read the whole vector);
    - lora: a dict `{"lora_A": (d_ff, r), "lora_B": (r, hidden), "r", "alpha",
      "intervention_components", "concept_id"}`, applied as x_mid @ (A @ B): lora_a = Aᵀ, lora_b = Bᵀ;
    - local weight: a dict `{"weight": (d_ff, hidden), "bias": (hidden,), "intervention_components",
      "concept_id"}`, applied as x_mid @ W + b: delta_w = Wᵀ, delta_b = b;
    - a dict of such dicts keyed by concept id holds several concepts (`concept` picks one).
    The weight forms must act on the MLP's mid activations (`intervention_components: mlp_mid`).

    Where the update acts differs from the reference in ways the book documents (chapter 1): the
    result's `.note` says how, its `.provenance` names the file, and with `model` given the shapes
    are checked and a ReferencePlacementWarning is raised where the difference changes the logits
    (weight forms on Gemma-2, whose post-feedforward norm the reference's term bypasses).
    """
    file = _reference_file(Path(path), layer)
    layer_index = int(_REFERENCE_FILE.fullmatch(file.name)["layer"])  # type: ignore[index]  # checked by _reference_file
    state = _one_concept(torch.load(file, map_location="cpu", weights_only=True), concept, file)
    form = _reference_form(state, file)
    folder = _REFERENCE_FOLDER.fullmatch(file.parent.name)
    if folder and folder["form"] != form:
        raise ValueError(f"{file}: the folder {file.parent.name!r} says {folder['form']} but the file holds a {form}")
    intervention = _from_reference(state, form, layer_index, file)
    if model is not None:
        intervention.check_fits(model)
    note = placement_note(form, model, layer_index)
    annotated: Any = intervention  # nn.Module types its extra attributes as tensors and modules
    annotated.note = note
    annotated.provenance = {"source": REFERENCE_CODE, "file": str(file), "method": folder["method"] if folder else None,
                            "concept": concept, "placement": note}
    if model is not None and form != "vector" and has_post_mlp_norm(model, layer_index):
        warnings.warn(f"{file}: {note}", ReferencePlacementWarning, stacklevel=2)
    return intervention


def _reference_file(path: Path, layer: int | None) -> Path:
    """The `layer_<L>.pt` file that `path` names (itself, or the one in that folder)."""
    if path.is_dir():
        if layer is not None:
            path = path / f"layer_{layer}.pt"
        else:
            found = sorted(path.glob("layer_*.pt"))
            if len(found) != 1:
                raise ValueError(f"{path} holds {len(found)} layer_<L>.pt files ({[p.name for p in found]}); "
                                 "pass layer= to pick one")
            path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no reference-code file at {path}")
    if not _REFERENCE_FILE.fullmatch(path.name):
        raise ValueError(f"{path}: the reference code names its files layer_<L>.pt; the layer is read from the name")
    return path


def _one_concept(state: object, concept: int, file: Path) -> object:
    """The saved update of one concept (a file may stack several)."""
    if isinstance(state, Tensor):
        if state.ndim == 1:
            if concept != 0:
                raise ValueError(f"{file} holds a single vector (one concept); concept {concept} is not in it")
            return state
        if state.ndim == 2 and 0 <= concept < state.shape[0]:
            return state[concept]
        raise ValueError(f"{file}: a vector file holds shape {tuple(state.shape)}; "
                         f"concept {concept} is not a row of it")
    if isinstance(state, dict) and state and all(isinstance(value, dict) for value in state.values()):
        if concept not in state:
            raise ValueError(f"{file} holds concepts {sorted(state)}, not {concept}")
        return state[concept]
    return state


def _reference_form(state: object, file: Path) -> str:
    if isinstance(state, Tensor):
        return "vector"
    if isinstance(state, dict) and {"lora_A", "lora_B"} <= set(state):
        return "lora"
    if isinstance(state, dict) and {"weight", "bias"} <= set(state):
        return "local_weight"
    shown = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"{file} is not a reference-code update: expected a tensor (vector), a dict with lora_A and "
                     f"lora_B (lora) or with weight and bias (local weight), got {shown}")


def _from_reference(state: Any, form: str, layer: int, file: Path) -> Intervention:
    """The reference's (x_mid @ M) convention turned into splitlib's (M h) one: matrices transposed."""
    if form == "vector":
        return Intervention("vector", layer, delta_b=state.float()).requires_grad_(False)
    components = state.get("intervention_components", "mlp_mid")
    if components != "mlp_mid":
        raise ValueError(f"{file}: intervention_components is {components!r}; splitlib's weight forms act on the "
                         "down-projection's input (the reference's 'mlp_mid') only")
    if form == "lora":
        lora_a, lora_b = state["lora_A"].float(), state["lora_B"].float()
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[1] != lora_b.shape[0]:
            raise ValueError(f"{file}: lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)} are not "
                             "(d_ff, r) and (r, hidden)")
        return Intervention("lora", layer, lora_a=lora_a.T, lora_b=lora_b.T).requires_grad_(False)
    weight = state["weight"].float()
    if weight.ndim != 2:
        raise ValueError(f"{file}: weight has shape {tuple(weight.shape)}, not (d_ff, hidden)")
    return Intervention("local_weight", layer, delta_w=weight.T, delta_b=state["bias"].float()).requires_grad_(False)


def has_post_mlp_norm(model: nn.Module, layer: int) -> bool:
    """Whether layer `layer` normalises its MLP output before the residual add (Gemma-2's
    post_feedforward_layernorm)."""
    return hasattr(decoder_layers(model)[layer], "post_feedforward_layernorm")


def placement_note(form: str, model: nn.Module | None = None, layer: int = 0) -> str:
    """How a reference-code update of `form` acts in splitlib compared with the reference code."""
    check_choice("form", form, FORMS)
    if form == "vector":
        return ("The reference code adds m·v to the output of decoder layer L past the chat template's head in "
                "training and scoring, and at every position in generation, as splitlib does. "
                "Its trained scalar (proj.bias, added to m in training only) is not in the file, so m means what it "
                "means in the reference's applier, not in its training.")
    note = ("The reference code adds m(x_mid ΔW + Δb) to the output of decoder layer L; splitlib adds it to the "
            "output of the MLP down-projection. The two agree where the MLP output goes straight into the residual "
            "stream (Llama, Qwen-2.5) and differ on Gemma-2, whose post_feedforward_layernorm the reference's term "
            "bypasses and splitlib's passes through (chapter 1).")
    if form == "lora":
        note += " lora_alpha is in the file but, as in the reference's forward, not applied (no alpha/r scaling)."
    if model is not None:
        kind = as_causal_lm(model).config.model_type
        note += (f" In this model ({kind}) they differ: its logits will not match the reference's."
                 if has_post_mlp_norm(model, layer) else f" In this model ({kind}) they agree.")
    return note


# ----- llama.cpp control vectors ---------------------------------------------------------------------------
def to_gguf(intervention: Intervention, path: str | os.PathLike, *, model: nn.Module | None = None,
            multiplier: float = 1.0, model_hint: str | None = None) -> Path:
    """Write a vector-form update as a llama.cpp control vector (GGUF) and return the path.

    The file holds one float32 tensor `direction.<L>` of shape (hidden,) with the values m·Δb, and
    the KVs `general.architecture = "controlvector"`, `controlvector.model_hint` (the model's type,
    e.g. "llama", "qwen2", "gemma2", which are also llama.cpp's architecture names),
    `controlvector.layer_count` (1, the number of directions) and `splitlib.provenance`.

    Layer numbering: llama.cpp adds `direction.N` to the output of its layer N counted from 0 (each
    model graph calls `build_cvec(cur, il)` at the end of layer `il`; the loader puts direction.N in
    slot N). splitlib's `layer` counts decoder layers from 0 and adds Δb to that layer's output too,
    so the tensor is `direction.<layer>`, unshifted. llama.cpp never steers layer 0 (it rejects
    `direction.0`), so a layer-0 vector is refused. `--control-vector-scaled FILE S` scales by S again.
    """
    import gguf

    if intervention.form != "vector":
        raise ValueError(f"only the vector form is a llama.cpp control vector, not {intervention.form!r}; "
                         "export a lora as 'peft' or a local weight as 'merged'")
    if intervention.layer == 0:
        raise ValueError("llama.cpp applies control vectors from layer 1 on (it rejects direction.0); "
                         "a layer-0 vector has no control-vector equivalent")
    multiplier = check_number("multiplier", multiplier)
    if model is not None:
        check_intervention(model, intervention)
    hint = model_hint or (as_causal_lm(model).config.model_type if model is not None else "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    direction = (multiplier * intervention.delta_b.detach().float().cpu()).numpy()
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", hint)
    writer.add_int32("controlvector.layer_count", 1)
    writer.add_string(PROVENANCE_KEY, _encoded(provenance(**_intervention_fields(
        intervention, model, multiplier=multiplier, llama_cpp_direction=f"direction.{intervention.layer}"))))
    writer.add_tensor(f"direction.{intervention.layer}", direction)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf(path: str | os.PathLike) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """A control vector's directions by layer (float32 arrays) and its KVs, read with gguf's GGUFReader."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    values = {name: field.contents() for name, field in reader.fields.items()}
    if values.get("general.architecture") != "controlvector":
        raise ValueError(f"{path} is not a control vector (general.architecture is "
                         f"{values.get('general.architecture')!r})")
    directions = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction" or not number.isdigit():
            raise ValueError(f"{path}: unexpected tensor {tensor.name!r} in a control vector")
        directions[int(number)] = tensor.data.astype("float32").reshape(-1)
    return directions, values


def load_gguf(path: str | os.PathLike, layer: int | None = None) -> Intervention:
    """One direction of a control vector as a vector-form Intervention (`layer` picks one of several)."""
    directions, values = read_gguf(path)
    if layer is None:
        if len(directions) != 1:
            raise ValueError(f"{path} holds directions for layers {sorted(directions)}; pass layer= to pick one")
        (layer,) = directions
    if layer not in directions:
        raise ValueError(f"{path} holds directions for layers {sorted(directions)}, not {layer}")
    loaded = Intervention("vector", layer, delta_b=torch.from_numpy(directions[layer].copy())).requires_grad_(False)
    annotated: Any = loaded
    annotated.provenance = json.loads(values.get(PROVENANCE_KEY, "{}"))
    return loaded


# ----- merged checkpoints ----------------------------------------------------------------------------------
def merged_checkpoint(intervention: Intervention, model: nn.Module, out: str | os.PathLike, multiplier: float = 1.0,
                      *, tokenizer: Any = None) -> Path:
    """Save a copy of `model` with the update merged in at `multiplier` m: W_down + mΔW and b_down + mΔb
    at layer L, via `save_pretrained` into the folder `out` (with the tokenizer, if given).

    The model itself is not changed: only the new tensors are built, in the model's dtype (a bf16
    model rounds W + mΔW to bf16, so its logits match the hooked update to bf16 precision, not 1e-5).
    A Δb needs a bias on the down-projection: Llama's config has one (`mlp_bias`, which adds zero
    biases to every gate, up and down projection); Qwen-2.5 and Gemma-2 have none, so a nonzero Δb is
    refused there. The vector form merges the same way (a bias on the down-projection is a shift of
    the layer's output), except where a post-feedforward norm (Gemma-2) sits in between.
    """
    from transformers.utils import logging as hf_logging

    multiplier = check_number("multiplier", multiplier)
    check_intervention(model, intervention)
    state, config = _merged_state(intervention, model, multiplier)
    out = Path(out)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-shard bar is noise in a chapter or a test log
    try:
        as_causal_lm(model).save_pretrained(out, state_dict=state)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    config.save_pretrained(out)
    for file in sorted(out.glob("*.safetensors")):
        stamp_safetensors(file, _intervention_fields(intervention, model, merged_multiplier=multiplier))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _merged_state(intervention: Intervention, model: nn.Module, multiplier: float) -> tuple[dict[str, Tensor], Any]:
    """The model's state dict with layer L's down-projection replaced, and the config to save with it."""
    import copy

    config = copy.deepcopy(as_causal_lm(model).config)
    state = dict(model.state_dict())
    projection = down_projection(model, intervention.layer)
    prefix = _module_name(model, projection)
    weight = projection.weight
    delta_w = intervention.delta_weight()
    if delta_w is not None:
        merged = weight.detach().float() + multiplier * delta_w.detach().to(weight.device).float()
        state[f"{prefix}.weight"] = merged.to(weight.dtype)
    delta_b = intervention.delta_bias()
    if delta_b is not None and bool((delta_b != 0).any()) and multiplier != 0:
        _check_mergeable_bias(intervention, model, config)
        if projection.bias is None:
            state.update(_zero_mlp_biases(model))
            config.mlp_bias = True
        bias = state[f"{prefix}.bias"]
        state[f"{prefix}.bias"] = (bias.float() + multiplier * delta_b.detach().to(bias.device).float()).to(bias.dtype)
    return state, config


def _check_mergeable_bias(intervention: Intervention, model: nn.Module, config: Any) -> None:
    kind = config.model_type
    if intervention.form == "vector" and has_post_mlp_norm(model, intervention.layer):
        raise ValueError(f"{kind} normalises the MLP output before the residual add, so a shift of layer "
                         f"{intervention.layer}'s output is not a down-projection bias; export the vector as "
                         "'gguf' or 'safetensors'")
    if down_projection(model, intervention.layer).bias is None and not hasattr(config, "mlp_bias"):
        raise ValueError(f"{kind}'s MLP has no bias, so Δb cannot be merged into a checkpoint; export 'safetensors' "
                         "instead, or merge a local-weight update with Δb = 0 (Intervention.random(..., bias=False))")


def _zero_mlp_biases(model: nn.Module) -> dict[str, Tensor]:
    """Zero biases for every MLP projection, which `mlp_bias = True` makes the architecture expect."""
    biases = {}
    for layer in decoder_layers(model):
        for name in ("gate_proj", "up_proj", "down_proj"):
            linear = getattr(layer.mlp, name)
            key = f"{_module_name(model, linear)}.bias"
            biases[key] = torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
    return biases


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError("module not found in model")


# ----- one entry point -----------------------------------------------------------------------------------
EXPORT_FORMATS = ("gguf", "peft", "merged", "safetensors")


def export(intervention: Intervention, fmt: str, out: str | os.PathLike, model: nn.Module | None = None, *,
           multiplier: float = 1.0, tokenizer: Any = None) -> Path:
    """Write `intervention` as `fmt` to `out` and return what was written, its provenance inside:
    - "safetensors": splitlib's own folder (`Intervention.save`; `Intervention.load` reads it back);
    - "peft": a LoRA adapter folder naming the real base model (lora form; needs `model`);
    - "gguf": a llama.cpp control vector file (vector form; `model` adds the model hint and a shape check);
    - "merged": a copy of the model with the update merged at `multiplier` (needs `model`; `tokenizer`
      is saved beside it when given)."""
    check_choice("export format", fmt, EXPORT_FORMATS)
    out = Path(out)
    if fmt == "safetensors":
        own = dict(getattr(intervention, "provenance", {}))
        if model is not None:
            own.setdefault("model", model_name(model))
        return intervention.save(out, own)
    if fmt == "gguf":
        return to_gguf(intervention, out, model=model, multiplier=multiplier)
    if model is None:
        raise ValueError(f"exporting as {fmt!r} needs the model the intervention was made for (model=...)")
    if fmt == "peft":
        return intervention.save_peft(model, out)
    return merged_checkpoint(intervention, model, out, multiplier, tokenizer=tokenizer)
