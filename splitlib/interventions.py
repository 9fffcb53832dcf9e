"""The unified intervention of the paper's Eq. 4: h' = (W + mΔW)h + (b + mΔb) at one layer.

Three forms share one object (Table 1):
- `vector`: Δb only, added to the residual stream at the output of decoder layer L;
- `lora`: ΔW = B·A of rank r on the MLP down-projection of layer L;
- `local_weight`: a full ΔW and a Δb on that down-projection.

Apply it with a context manager; the multiplier m can change inside without re-registering hooks,
and every hook is removed on exit, also when the body raises.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .checks import (
    check_choice,
    check_finite_array,
    check_grid,
    check_int,
    check_number,
    check_positive_int,
    check_type,
)
from .models import check_layer, decoder_layers, down_projection, recording

if TYPE_CHECKING:
    import pandas as pd

FORMS = ("vector", "lora", "local_weight")


def check_form(form: str) -> str:
    """`form` if it is one of FORMS, else a ValueError naming the choices."""
    return check_choice("form", form, FORMS)


def _as_parameter(name: str, value: Tensor | None, ndim: int) -> nn.Parameter:
    """A float32 copy of `value`, checked: `ndim` dimensions, none empty, every entry finite."""
    if value is None:
        raise ValueError(f"{name} is required for this form")
    value = torch.as_tensor(value)
    if value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    if value.numel() == 0:
        what = "LoRA rank must be >= 1" if name.startswith("lora") else "an update needs entries"
        raise ValueError(f"{name} has shape {tuple(value.shape)}: {what}")
    check_finite_array(name, value)
    return nn.Parameter(value.detach().clone().float())


def check_intervention(model: nn.Module, intervention: object) -> None:
    """For an entry point: `intervention` is None or an Intervention that fits `model`, with finite values."""
    if intervention is not None:
        checked = check_type("intervention", intervention, Intervention)
        checked.check_fits(model)
        checked.check_finite()


class Intervention(nn.Module):
    """An update (ΔW, Δb) at one decoder layer, in one of three forms.

    Parameters are float32 `nn.Parameter`s so a training loop can optimise them directly; they are
    cast to the model's dtype when applied.
    """

    def __init__(
        self,
        form: str,
        layer: int,
        *,
        delta_b: Tensor | None = None,
        delta_w: Tensor | None = None,
        lora_a: Tensor | None = None,
        lora_b: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.form = check_form(form)
        self.layer = check_int("layer", layer, low=0)
        given = {"delta_b": delta_b, "delta_w": delta_w, "lora_a": lora_a, "lora_b": lora_b}
        allowed = {"vector": {"delta_b"}, "lora": {"lora_a", "lora_b"}, "local_weight": {"delta_w", "delta_b"}}[form]
        extra = sorted(k for k, v in given.items() if v is not None and k not in allowed)
        if extra:
            raise ValueError(f"the {form} form takes {sorted(allowed)}, not {extra}")
        if form == "vector":
            self.delta_b = _as_parameter("delta_b", delta_b, 1)
        elif form == "lora":
            self.lora_a = _as_parameter("lora_a", lora_a, 2)
            self.lora_b = _as_parameter("lora_b", lora_b, 2)
            if self.lora_a.shape[0] != self.lora_b.shape[1]:
                raise ValueError(
                    f"LoRA ranks disagree: lora_a is {tuple(self.lora_a.shape)} (r, d_in) but "
                    f"lora_b is {tuple(self.lora_b.shape)} (d_out, r)"
                )
        else:
            self.delta_w = _as_parameter("delta_w", delta_w, 2)
            bias = torch.zeros(self.delta_w.shape[0]) if delta_b is None else delta_b
            self.delta_b = _as_parameter("delta_b", bias, 1)
            if self.delta_b.shape[0] != self.delta_w.shape[0]:
                raise ValueError(
                    f"delta_b has {self.delta_b.shape[0]} entries but delta_w has "
                    f"{self.delta_w.shape[0]} output rows"
                )

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def initial(cls, model: nn.Module, form: str, layer: int, rank: int = 4, seed: int = 0) -> Intervention:
        """A trainable starting point that changes nothing: zeros, or LoRA with A random and B = 0."""
        d_in, d_out = _down_proj_shape(model, layer)
        check_form(form)
        check_positive_int("rank", rank)
        device = _layer_device(model, layer)
        if form == "vector":
            return cls("vector", layer, delta_b=torch.zeros(d_out)).to(device)
        if form == "local_weight":
            return cls("local_weight", layer, delta_w=torch.zeros(d_out, d_in), delta_b=torch.zeros(d_out)).to(device)
        lora_a = torch.empty(rank, d_in)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
        return cls("lora", layer, lora_a=lora_a, lora_b=torch.zeros(d_out, rank)).to(device)

    @classmethod
    def random(
        cls,
        model: nn.Module,
        form: str,
        layer: int,
        rank: int = 4,
        seed: int = 0,
        gain: float = 1.0,
        bias: bool = True,
    ) -> Intervention:
        """A seeded random update with ‖Δb‖ ≈ gain and ‖ΔW h‖ ≈ gain·RMS(h); `bias=False` gives a
        local-weight update with Δb = 0.

        A teaching and testing device, not a trained intervention.
        """
        d_in, d_out = _down_proj_shape(model, layer)
        check_form(form)
        check_positive_int("rank", rank)
        check_number("gain", gain)
        gen = torch.Generator().manual_seed(seed)

        def normal(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen)

        device = _layer_device(model, layer)  # drawn on the CPU: the same values on every device
        if form == "vector":
            return cls("vector", layer, delta_b=gain * normal(d_out) / math.sqrt(d_out)).to(device)
        if form == "local_weight":
            return cls(
                "local_weight",
                layer,
                delta_w=gain * normal(d_out, d_in) / math.sqrt(d_in * d_out),
                delta_b=gain * normal(d_out) / math.sqrt(d_out) * float(bias),
            ).to(device)
        return cls(
            "lora",
            layer,
            lora_a=normal(rank, d_in) / math.sqrt(d_in),
            lora_b=gain * normal(d_out, rank) / math.sqrt(rank * d_out),
        ).to(device)

    # ----- the update ---------------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        return self.lora_a.shape[0] if self.form == "lora" else None

    @property
    def d_in(self) -> int | None:
        """Input width of ΔW (the MLP's d_ff); None for the vector form, which has no ΔW."""
        if self.form == "vector":
            return None
        return self.lora_a.shape[1] if self.form == "lora" else self.delta_w.shape[1]

    @property
    def d_out(self) -> int:
        return self.lora_b.shape[0] if self.form == "lora" else self.delta_b.shape[0]

    def delta_weight(self) -> Tensor | None:
        """ΔW as a full (d_out, d_in) matrix (B·A for LoRA); None for the vector form."""
        if self.form == "lora":
            return self.lora_b @ self.lora_a
        return self.delta_w if self.form == "local_weight" else None

    def delta_bias(self) -> Tensor | None:
        """Δb, or None for LoRA, which has no bias term (Table 1)."""
        return None if self.form == "lora" else self.delta_b

    def delta(self, h: Tensor) -> Tensor:
        """ΔW h + Δb for down-projection inputs h (..., d_in): Δh at m = 1 (Eq. 5).

        For the vector form h is ignored: Δh = Δb at every position.
        """
        if self.form == "vector":
            return self.delta_b.to(h.dtype).expand(*h.shape[:-1], self.d_out)
        if self.form == "lora":
            return (h @ self.lora_a.to(h.dtype).T) @ self.lora_b.to(h.dtype).T
        return h @ self.delta_w.to(h.dtype).T + self.delta_b.to(h.dtype)

    def check_fits(self, model: nn.Module) -> None:
        """Raise a ValueError if the layer or a shape does not fit `model`."""
        check_layer(model, self.layer)
        d_in, d_out = _down_proj_shape(model, self.layer)
        if self.d_out != d_out:
            what = "delta_b" if self.form != "lora" else "lora_b"
            raise ValueError(
                f"{self.form} update does not fit layer {self.layer}: {what} gives d_out={self.d_out} "
                f"but the model's hidden size is {d_out}"
            )
        if self.form != "vector" and self.d_in != d_in:
            what = "delta_w" if self.form == "local_weight" else "lora_a"
            raise ValueError(
                f"{self.form} update does not fit layer {self.layer}: {what} gives d_in={self.d_in} "
                f"but the down-projection takes {d_in} inputs"
            )

    def placed_for(self, model: nn.Module) -> Intervention:
        """Self where its parameters sit on the device of `model`'s layer `self.layer`; else a copy
        there (an update loaded or computed on the CPU applied to a model on a GPU). An update that
        would take gradients is refused instead: they would reach the copy, not the update."""
        device = _layer_device(model, self.layer)
        if all(p.device == device for p in self.parameters()):
            return self
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            # a copy would take the gradients, silently: training must move the update itself
            raise ValueError(f"{self!r} takes gradients here but sits on {next(self.parameters()).device}, not on "
                             f"{device} with layer {self.layer}: move it there with .to({str(device)!r}) first, or "
                             "apply it under torch.no_grad()")
        return copy.deepcopy(self).to(device)

    def check_finite(self) -> None:
        """A ValueError if ΔW, Δb or a LoRA factor holds NaN or infinite values (say, after a
        diverged training run or an edit in place): they would turn every loss into NaN."""
        for name, value in self.named_parameters():
            check_finite_array(f"{self!r}.{name}", value)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # Shadows nn.Module.apply(fn) on purpose: an intervention is applied to a model, not to its submodules.
    @contextmanager
    def apply(  # type: ignore[override]
        self, model: nn.Module, multiplier: float | Tensor = 1.0, dropout: float = 0.0
    ) -> Iterator[Applied]:
        """Hook the update into `model` for the body of a `with` block; see `Applied`.

        With a number for `multiplier` the update's values are checked too; a tensor of
        multipliers comes from the engine or training, whose entry points checked both once
        (a check on every forward would wait for the device each time)."""
        self.check_fits(model)
        handle = Applied(self.placed_for(model), multiplier, dropout)
        if not isinstance(multiplier, Tensor):
            self.check_finite()
        # prepend: run before any other hook on the module (transformers records
        # output_hidden_states with its own hooks), so every observer sees the steered value.
        if self.form == "vector":
            target = decoder_layers(model)[self.layer]
            hook = target.register_forward_hook(handle._add_to_layer_output, prepend=True)
        else:
            target = down_projection(model, self.layer)
            hook = target.register_forward_hook(handle._add_to_down_projection, prepend=True)
        try:
            yield handle
        finally:
            hook.remove()

    # ----- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path, provenance: dict | None = None) -> Path:
        """Write `intervention.safetensors` and `intervention.json` (form, layer, how it was made); the
        safetensors header carries the same provenance and the code version (`interop.read_provenance`)."""
        from safetensors.torch import save_file

        from .provenance import safetensors_metadata

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  folder / "intervention.safetensors",
                  metadata=safetensors_metadata({**(provenance or {}), "form": self.form, "layer": self.layer}))
        meta = {"form": self.form, "layer": self.layer, "provenance": provenance or {}}
        (folder / "intervention.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Intervention:
        """Read what `save` wrote; the provenance is on `.provenance`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / "intervention.json").read_text())
            tensors = load_file(folder / "intervention.safetensors")
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{folder} holds no saved intervention ({error.filename} is missing)") from None
        loaded = cls(meta["form"], meta["layer"], **tensors).requires_grad_(False)
        loaded.provenance = meta.get("provenance", {})
        return loaded

    def save_peft(self, model: nn.Module, folder: str | Path, provenance: dict | None = None) -> Path:
        """Write a LoRA-form update as a peft adapter (LoRA on layer L's down-projection, scale 1) whose
        base model is the real model (`interop.base_model_id`), with `provenance` (default: the
        intervention's own, if loaded) in its safetensors header."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        from .provenance import base_model_id, model_name, safetensors_metadata

        if self.form != "lora":
            raise ValueError(f"only the lora form exports to a peft adapter, not {self.form!r}")
        self.check_fits(model)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        module_name = _qualified_name(model, down_projection(model, self.layer))
        rank = self.rank
        assert rank is not None  # the lora form has a rank
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,  # peft scales B·A by alpha/r: alpha = r keeps ΔW = B·A exactly
            lora_dropout=0.0,
            bias="none",
            target_modules=[module_name],
            base_model_name_or_path=base_model_id(model),
            task_type="CAUSAL_LM",
        )
        config.save_pretrained(str(folder))
        prefix = f"base_model.model.{module_name}"
        save_file(
            {
                f"{prefix}.lora_A.weight": self.lora_a.detach().contiguous(),
                f"{prefix}.lora_B.weight": self.lora_b.detach().contiguous(),
            },
            folder / "adapter_model.safetensors",
            metadata=safetensors_metadata({**(provenance or getattr(self, "provenance", {})), "form": self.form,
                                           "layer": self.layer, "model": model_name(model),
                                           "base_model": base_model_id(model)}),
        )
        return folder

    @classmethod
    def load_peft(cls, folder: str | Path) -> Intervention:
        """Read a peft LoRA adapter on one down-projection; alpha/r is folded into B."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("use_dora"):
            raise ValueError(f"{folder}: DoRA adapters are not a LoRA-form update")
        tensors = load_file(folder / "adapter_model.safetensors")
        a_keys = [k for k in tensors if k.endswith(".mlp.down_proj.lora_A.weight")]
        if len(a_keys) != 1 or len(tensors) != 2:
            raise ValueError(
                f"{folder}: expected LoRA on exactly one mlp.down_proj, found tensors {sorted(tensors)}"
            )
        a_key = a_keys[0]
        layer = _layer_index(a_key)
        lora_a = tensors[a_key]
        lora_b = tensors[a_key.replace("lora_A", "lora_B")]
        rank, alpha = lora_a.shape[0], config.get("lora_alpha", lora_a.shape[0])
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        return cls("lora", layer, lora_a=lora_a, lora_b=lora_b * scaling)

    def __repr__(self) -> str:
        shape = {"vector": f"d={self.d_out}", "lora": f"r={self.rank}", "local_weight": f"{self.d_out}x{self.d_in}"}
        return f"Intervention(form={self.form!r}, layer={self.layer}, {shape[self.form]})"


def _layer_device(model: nn.Module, layer: int) -> torch.device:
    """Where decoder layer `layer` of `model` computes (with a device map, not always the first device)."""
    return next(decoder_layers(model)[layer].parameters()).device


@dataclass
class Applied:
    """A live intervention; set `multiplier` to change m without touching the hooks.

    `multiplier` is a float, or a tensor that broadcasts against the activations (for example one
    m per batch row, shape (batch, 1, 1), when training on examples drawn at different m).
    `dropout` (training only) drops elements of Δh.
    """

    intervention: Intervention
    multiplier: float | Tensor
    dropout: float = 0.0

    def __setattr__(self, name: str, value: object) -> None:
        """Numbers are checked on every assignment (also `live.multiplier = m` inside a block)."""
        if name == "multiplier" and not isinstance(value, Tensor):
            value = check_number("multiplier", value)
        elif name == "dropout":
            value = check_number("dropout", value, 0, 1, open_high=True)
        super().__setattr__(name, value)

    def _is_zero(self) -> bool:
        return not isinstance(self.multiplier, Tensor) and self.multiplier == 0

    def shift(self, delta: Tensor, dtype: torch.dtype) -> Tensor:
        """m·Δh with this handle's multiplier and dropout, in `dtype`."""
        return self._shift(delta, dtype)

    def _shift(self, delta: Tensor, dtype: torch.dtype) -> Tensor:
        if self.dropout:
            delta = nn.functional.dropout(delta, self.dropout, training=True)
        multiplier = self.multiplier.to(dtype) if isinstance(self.multiplier, Tensor) else self.multiplier
        return multiplier * delta.to(dtype)

    def _add_to_layer_output(self, _module: nn.Module, _inputs: tuple, output: Tensor | tuple) -> object:
        if self._is_zero():
            return None  # leave the output untouched: m = 0 is bit-identical to no intervention
        hidden = output[0] if isinstance(output, tuple) else output  # older transformers return a tuple
        shifted = hidden + self._shift(self.intervention.delta_b.expand_as(hidden), hidden.dtype)
        return (shifted,) + output[1:] if isinstance(output, tuple) else shifted

    def _add_to_down_projection(self, _module: nn.Module, inputs: tuple, output: Tensor) -> object:
        if self._is_zero():
            return None
        return output + self._shift(self.intervention.delta(inputs[0]), output.dtype)


@dataclass
class LayerRecord:
    """Activations seen by one forward pass at one layer (filled by `record_layer`)."""

    _inputs: dict[str, Tensor]
    _outputs: dict[str, Tensor]

    @property
    def down_proj_input(self) -> Tensor | None:
        return self._inputs.get("down_proj")

    @property
    def down_proj_output(self) -> Tensor | None:
        return self._outputs.get("down_proj")

    @property
    def layer_output(self) -> Tensor | None:
        return self._outputs.get("layer")


@contextmanager
def record_layer(model: nn.Module, layer: int) -> Iterator[LayerRecord]:
    """Record the down-projection's input and output and the block output of `layer`.

    An applied intervention's hooks run first, so the recorded down-projection output and block
    output include its effect whichever `with` block is outermost.
    """
    projection = down_projection(model, layer)
    with (recording({"down_proj": projection}, inputs=True) as inputs,
          recording({"down_proj": projection, "layer": decoder_layers(model)[layer]}) as outputs):
        yield LayerRecord(inputs, outputs)


def _masked(values: Tensor, mask: Tensor | None) -> Tensor:
    """Rows of `values` (..., d) at real tokens only, flattened to (n_tokens, d)."""
    flat = values.reshape(-1, values.shape[-1])
    return flat if mask is None else flat[mask.reshape(-1).bool()]


def calibrate(
    intervention: Intervention, model: nn.Module, batch: dict[str, Tensor], relative_norm: float
) -> Intervention:
    """A copy of `intervention` rescaled so that, over the batch's tokens, the median ‖ΔW h + Δb‖
    is `relative_norm` times the median norm of layer L's output (forms compared at equal strength)."""
    check_number("relative_norm", relative_norm, 0, open_low=True)
    check_intervention(model, intervention)
    mask = batch.get("attention_mask")
    with torch.no_grad(), record_layer(model, intervention.layer) as seen:
        model(**batch)
        assert seen.down_proj_input is not None and seen.layer_output is not None  # filled by the forward
        median = _masked(intervention.delta(seen.down_proj_input), mask).norm(dim=-1).median()
        residual = _masked(seen.layer_output, mask).norm(dim=-1).median()
    if not torch.isfinite(median) or median == 0:
        raise ValueError(f"cannot calibrate {intervention!r}: its median Δh on this batch is {median.item()}")
    factor = float(relative_norm * residual / median)
    scaled = copy.deepcopy(intervention)
    with torch.no_grad():
        for name in ("delta_b", "delta_w", "lora_b"):
            if hasattr(scaled, name):
                getattr(scaled, name).mul_(factor)
    return scaled


def measure_delta_h(
    model: nn.Module, intervention: Intervention, batch: dict[str, Tensor], multipliers: list[float]
) -> pd.DataFrame:
    """Measured Δh against Eq. 5's m(ΔW h + Δb), token by token, at each multiplier.

    Δh is measured where the form acts: the block output for the vector form, the
    down-projection output for the weight forms. One row per (m, token).
    """
    import pandas as pd

    multipliers = check_grid("multipliers", multipliers)
    check_intervention(model, intervention)
    mask = batch.get("attention_mask")
    site = "layer_output" if intervention.form == "vector" else "down_proj_output"
    with torch.no_grad():
        with record_layer(model, intervention.layer) as plain:
            model(**batch)
        assert plain.down_proj_input is not None and plain.layer_output is not None  # filled by the forward
        # compared in float32 on the CPU, whatever the model's dtype and device (numpy has no bfloat16)
        formula_at_one = _masked(intervention.delta(plain.down_proj_input), mask).float().cpu()
        residual_norm = _masked(plain.layer_output, mask).float().cpu().norm(dim=-1)
        frames = []
        for m in multipliers:
            with record_layer(model, intervention.layer) as steered, intervention.apply(model, m):
                model(**batch)
            measured = _masked(getattr(steered, site) - getattr(plain, site), mask).float().cpu()
            formula = m * formula_at_one
            frames.append(
                pd.DataFrame(
                    {
                        "form": intervention.form,
                        "m": m,
                        "token": range(measured.shape[0]),
                        "measured_norm": measured.norm(dim=-1).numpy(),
                        "formula_norm": formula.norm(dim=-1).numpy(),
                        "max_abs_error": (measured - formula).abs().amax(dim=-1).numpy(),
                        "residual_norm": residual_norm.numpy(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def parameter_table(model: nn.Module, layer: int, rank: int = 4) -> list[dict[str, object]]:
    """The paper's Table 1 for `model`'s own sizes: each form's formula and parameter count."""
    check_positive_int("rank", rank)
    d_in, d_out = _down_proj_shape(model, layer)
    return [
        {
            "form": "local_weight",
            "update": "(W + mΔW) h + (b + mΔb)",
            "Δh": "m(ΔW h + Δb)",
            "size formula": "d_in·d_out + d_out",
            "parameters": d_in * d_out + d_out,
        },
        {
            "form": "lora",
            "update": "(W + m·BA) h + b",
            "Δh": "m·BA h",
            "size formula": "d_in·r + r·d_out",
            "parameters": d_in * rank + rank * d_out,
        },
        {
            "form": "vector",
            "update": "W h + (b + mΔb)",
            "Δh": "m·Δb",
            "size formula": "d_out",
            "parameters": d_out,
        },
    ]


def _down_proj_shape(model: nn.Module, layer: int) -> tuple[int, int]:
    proj = down_projection(model, layer)
    return proj.in_features, proj.out_features


def _qualified_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError("module not found in model")


def _layer_index(key: str) -> int:
    parts = key.split(".")
    try:
        return int(parts[parts.index("layers") + 1])
    except (ValueError, IndexError):
        raise ValueError(f"cannot read a layer index from adapter tensor {key!r}") from None
