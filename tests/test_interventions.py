"""The unified intervention: each form computes h' = (W + mΔW)h + (b + mΔb) exactly."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from splitlib import FORMS, Intervention, down_projection, record_layer
from splitlib.models import decoder_layers

LAYER = 2


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def with_replaced_down_proj(model: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A copy of `model` whose layer-LAYER down-projection is a new Linear(weight, bias)."""
    edited = copy.deepcopy(model)
    old = down_projection(edited, LAYER)
    new = nn.Linear(old.in_features, old.out_features, bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    decoder_layers(edited)[LAYER].mlp.down_proj = new
    return edited


@pytest.mark.parametrize("form", FORMS)
def test_zero_multiplier_is_bit_identical(model, tokens, form):
    base = logits(model, tokens)
    with Intervention.random(model, form, LAYER, seed=3, gain=5.0).apply(model, 0.0):
        assert torch.equal(logits(model, tokens), base)


@pytest.mark.parametrize("m", [-2.5, 0.7, 3.0])
def test_vector_adds_m_delta_b_to_the_layer_output(model, tokens, m):
    intervention = Intervention.random(model, "vector", LAYER, seed=1, gain=4.0)
    with torch.no_grad():
        plain = model(tokens, output_hidden_states=True).hidden_states[LAYER + 1]
        with intervention.apply(model, m):
            steered = model(tokens, output_hidden_states=True).hidden_states[LAYER + 1]
    torch.testing.assert_close(steered, plain + m * intervention.delta_b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("m", [-1.5, 2.0])
def test_vector_equals_an_explicit_hook_on_the_block(model, tokens, m):
    intervention = Intervention.random(model, "vector", LAYER, seed=1, gain=4.0)
    with intervention.apply(model, m):
        ours = logits(model, tokens)
    shift = m * intervention.delta_b.detach()
    hook = decoder_layers(model)[LAYER].register_forward_hook(lambda mod, inp, out: out + shift)
    try:
        reference = logits(model, tokens)
    finally:
        hook.remove()
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("m", [-2.0, 0.5, 1.0, 3.0])
def test_local_weight_equals_a_replaced_down_projection(model, tokens, m):
    intervention = Intervention.random(model, "local_weight", LAYER, seed=2, gain=4.0)
    w = down_projection(model, LAYER).weight.detach()
    reference = with_replaced_down_proj(model, w + m * intervention.delta_w.detach(), m * intervention.delta_b.detach())
    with intervention.apply(model, m):
        ours = logits(model, tokens)
    torch.testing.assert_close(ours, logits(reference, tokens), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, logits(model, tokens), atol=1e-3), "the update should change the logits"


@pytest.mark.parametrize("m", [-1.0, 2.0])
def test_lora_equals_local_weight_with_delta_w_equal_b_a(model, tokens, m):
    lora = Intervention.random(model, "lora", LAYER, rank=3, seed=4, gain=6.0)
    full = Intervention("local_weight", LAYER, delta_w=lora.delta_weight().detach(), delta_b=torch.zeros(lora.d_out))
    with lora.apply(model, m):
        via_lora = logits(model, tokens)
    with full.apply(model, m):
        via_full = logits(model, tokens)
    torch.testing.assert_close(via_lora, via_full, rtol=1e-4, atol=1e-5)


def test_delta_h_matches_the_formula(model, tokens):
    for form in FORMS:
        intervention = Intervention.random(model, form, LAYER, seed=5, gain=3.0)
        with torch.no_grad(), record_layer(model, LAYER) as plain:
            model(tokens)
        with torch.no_grad(), record_layer(model, LAYER) as steered, intervention.apply(model, 1.7):
            model(tokens)
        measured = steered.down_proj_output - plain.down_proj_output
        expected = 1.7 * intervention.delta(plain.down_proj_input).detach()
        if form == "vector":  # the vector acts on the block output, not inside the MLP
            measured = steered.layer_output - plain.layer_output
        torch.testing.assert_close(measured, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measure_delta_h_tables_the_formula_in_any_precision(model, tokens, dtype):
    """Chapter 1's table: measured Δh against m(ΔW h + Δb), per (m, token), also for a bf16 model
    as the paper profiles load one (numpy has no bfloat16: the table is float32)."""
    from splitlib import measure_delta_h

    model = copy.deepcopy(model).to(dtype)
    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    for form in FORMS:
        intervention = Intervention.random(model, form, LAYER, seed=5, gain=3.0)
        table = measure_delta_h(model, intervention, batch, [-1.0, 0.0, 2.0])
        assert len(table) == 3 * tokens.numel() and set(table.m) == {-1.0, 0.0, 2.0}
        assert table.measured_norm.dtype == np.float32
        zero = table[table.m == 0]
        assert (zero.measured_norm == 0).all() and (zero.max_abs_error == 0).all()
        steered = table[table.m == 2.0]
        tolerance = 1e-4 if dtype == torch.float32 else 0.05
        assert (steered.max_abs_error <= tolerance * steered.formula_norm.max()).all(), form
        assert np.allclose(table[table.m == -1.0].formula_norm * 2, steered.formula_norm.to_numpy(), rtol=1e-5)


def test_gemma2_weight_forms_act_before_the_post_feedforward_norm(arch, model, tokens):
    """A Δb on the down-projection equals the vector form only where the MLP output is not normalised."""
    bias = Intervention.random(model, "vector", LAYER, seed=6, gain=4.0).delta_b.detach()
    with Intervention("vector", LAYER, delta_b=bias).apply(model, 1.0):
        via_vector = logits(model, tokens)
    zeros = torch.zeros(bias.shape[0], down_projection(model, LAYER).in_features)
    with Intervention("local_weight", LAYER, delta_w=zeros, delta_b=bias).apply(model, 1.0):
        via_weight = logits(model, tokens)
    same = torch.allclose(via_vector, via_weight, atol=1e-5)
    assert same == (arch != "gemma2")


def test_multiplier_changes_without_new_hooks(model, tokens):
    intervention = Intervention.random(model, "lora", LAYER, seed=7, gain=5.0)
    before = hook_count(model)
    with intervention.apply(model, 1.0) as live:
        first = logits(model, tokens)
        count = hook_count(model)
        live.multiplier = -1.0
        second = logits(model, tokens)
        assert hook_count(model) == count == before + 1
    assert not torch.allclose(first, second)
    assert hook_count(model) == before


@pytest.mark.parametrize("form", FORMS)
def test_hooks_are_removed_when_the_body_raises(model, tokens, form):
    base = logits(model, tokens)
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with Intervention.random(model, form, LAYER, seed=8, gain=5.0).apply(model, 2.0):
            raise RuntimeError("boom")
    assert hook_count(model) == before
    assert torch.equal(logits(model, tokens), base)


@pytest.mark.parametrize("m", [1.0, 0.5, -2.0])
def test_peft_round_trip(model, tokens, tmp_path, m):
    from peft import PeftModel

    lora = Intervention.random(model, "lora", LAYER, rank=4, seed=9, gain=6.0)
    folder = lora.save_peft(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), folder).eval()
    for module in peft_model.modules():
        if hasattr(module, "scale_layer") and hasattr(module, "lora_A") and len(module.lora_A):
            module.scale_layer(m)
    with lora.apply(model, m):
        ours = logits(model, tokens)
    torch.testing.assert_close(ours, logits(peft_model, tokens), rtol=1e-4, atol=1e-5)

    reloaded = Intervention.load_peft(folder)
    assert reloaded.layer == LAYER and reloaded.form == "lora"
    assert torch.equal(reloaded.lora_a, lora.lora_a) and torch.equal(reloaded.lora_b, lora.lora_b)


def test_load_peft_folds_alpha_over_r(model, tokens, tmp_path):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, lora_alpha=7, target_modules=[f"model.layers.{LAYER}.mlp.down_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = Intervention.load_peft(tmp_path / "adapter")
    with loaded.apply(model, 1.0):
        ours = logits(model, tokens)
    torch.testing.assert_close(ours, logits(peft_model, tokens), rtol=1e-4, atol=1e-5)


# ----- bad input --------------------------------------------------------------------------------


def test_layer_out_of_range(model):
    intervention = Intervention.random(model, "vector", LAYER)
    intervention.layer = 99
    with pytest.raises(ValueError, match=r"layer 99 is out of range.*0\.\.3"):
        with intervention.apply(model):
            pass
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        Intervention.initial(model, "vector", 4)
    with pytest.raises(ValueError, match="non-negative int"):
        Intervention("vector", -1, delta_b=torch.zeros(32))


@pytest.mark.parametrize(
    ("form", "kwargs", "message"),
    [
        ("vector", {"delta_b": torch.zeros(31)}, r"delta_b gives d_out=31 but the model's hidden size is 32"),
        ("local_weight", {"delta_w": torch.zeros(32, 47)}, r"delta_w gives d_in=47 but the down-projection takes 48"),
        ("local_weight", {"delta_w": torch.zeros(33, 48)}, r"d_out=33"),
        ("lora", {"lora_a": torch.zeros(2, 40), "lora_b": torch.zeros(32, 2)}, r"lora_a gives d_in=40"),
    ],
)
def test_shapes_that_do_not_fit_the_model(model, form, kwargs, message):
    with pytest.raises(ValueError, match=message):
        with Intervention(form, LAYER, **kwargs).apply(model):
            pass


@pytest.mark.parametrize(
    ("form", "kwargs", "message"),
    [
        ("steer", {"delta_b": torch.zeros(32)}, r"unknown form 'steer'; choose one of vector, lora, local_weight"),
        ("vector", {}, r"delta_b is required"),
        ("vector", {"delta_b": torch.zeros(2, 32)}, r"delta_b must have 1 dimension"),
        ("vector", {"delta_w": torch.zeros(32, 48), "delta_b": torch.zeros(32)},
         r"vector form takes \['delta_b'\], not \['delta_w'\]"),
        ("lora", {"lora_a": torch.zeros(2, 48), "lora_b": torch.zeros(32, 3)}, r"LoRA ranks disagree"),
        ("local_weight", {"delta_w": torch.zeros(32, 48), "delta_b": torch.zeros(31)}, r"delta_b has 31 entries"),
    ],
)
def test_malformed_updates(form, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Intervention(form, LAYER, **kwargs)


def test_model_without_decoder_layers():
    not_a_decoder = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"cannot find the decoder layers of Sequential"):
        with Intervention("vector", 0, delta_b=torch.zeros(4)).apply(not_a_decoder):
            pass


def test_only_lora_exports_to_peft(model, tmp_path):
    with pytest.raises(ValueError, match="only the lora form exports"):
        Intervention.random(model, "vector", LAYER).save_peft(model, tmp_path)


@pytest.mark.parametrize("form", FORMS)
def test_an_update_on_another_device_is_applied_where_the_model_is(model, form):
    """A DiffMean vector or a loaded update lives on the CPU; the model may be on a GPU. The meta
    device stands in for the GPU here: a CPU tensor added to a meta one fails as a CUDA one would."""
    update = Intervention.random(model, form, 1, seed=0)
    elsewhere = copy.deepcopy(model).to("meta")
    with torch.no_grad(), update.apply(elsewhere, 2.0):
        logits = elsewhere(torch.zeros(1, 5, dtype=torch.long, device="meta")).logits
    assert logits.device.type == "meta"
    assert all(p.device.type == "cpu" for p in update.parameters())  # the caller's update stays put
    assert update.placed_for(model) is update  # same device: no copy, so training's gradients reach it


def test_a_trainable_update_on_another_device_is_refused_not_copied(model):
    update = Intervention.random(model, "vector", 1, seed=0).requires_grad_(True)
    elsewhere = copy.deepcopy(model).to("meta")
    with pytest.raises(ValueError, match="takes gradients here but sits on cpu, not on meta with layer 1"):
        with update.apply(elsewhere, 2.0):
            pass


@pytest.mark.parametrize("form", FORMS)
def test_new_updates_are_made_where_their_layer_computes(model, form):
    elsewhere = copy.deepcopy(model).to("meta")
    for update in (Intervention.random(elsewhere, form, 1, seed=0), Intervention.initial(elsewhere, form, 1)):
        assert all(p.device.type == "meta" for p in update.parameters())
        assert update.placed_for(elsewhere) is update
