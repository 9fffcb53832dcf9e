"""Interop: reference-code files, llama.cpp control vectors, peft adapters, merged checkpoints, provenance."""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

from splitlib import Intervention
from splitlib.interop import (
    ReferencePlacementWarning,
    export,
    load_gguf,
    load_reference,
    merged_checkpoint,
    read_provenance,
    reference_files,
    to_gguf,
)
from splitlib.models import decoder_layers, down_projection
from splitlib.provenance import EMBEDDED_HUB_ID, base_model_id, with_provenance

LAYER = 1  # llama.cpp never steers layer 0
M = 1.5


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


# ----- the reference code's files -----------------------------------------------------------------------
def reference_update(model: torch.nn.Module, form: str, seed: int = 0) -> object:
    """What the reference trainer saves for `form` (generate_spilt.py), with random values."""
    gen = torch.Generator().manual_seed(seed)
    proj = down_projection(model, LAYER)
    d_ff, d = proj.in_features, proj.out_features
    if form == "vector":
        return torch.randn(d, generator=gen)
    if form == "lora":
        return {"lora_A": torch.randn(d_ff, 4, generator=gen) / d_ff**0.5,
                "lora_B": 5 * torch.randn(4, d, generator=gen) / 2, "r": 4, "alpha": 32,
                "intervention_components": "mlp_mid", "concept_id": 0}
    return {"weight": 5 * torch.randn(d_ff, d, generator=gen) / d_ff, "bias": torch.randn(d, generator=gen),
            "intervention_components": "mlp_mid", "concept_id": 0}


@contextmanager
def reference_applied(model: torch.nn.Module, form: str, state: object, m: float):
    """The reference's forward (BlockOutputWrapper): the block output of layer L plus m·v, or plus
    m(x_mid @ ΔW + Δb) with x_mid the down-projection's input; written here from the digest, not splitlib."""
    seen = {}
    pre = down_projection(model, LAYER).register_forward_pre_hook(lambda _m, args: seen.update(x_mid=args[0]))

    def add(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if form == "vector":
            term = state
        elif form == "lora":
            term = seen["x_mid"] @ (state["lora_A"] @ state["lora_B"])
        else:
            term = seen["x_mid"] @ state["weight"] + state["bias"]
        shifted = hidden + m * term
        return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

    post = decoder_layers(model)[LAYER].register_forward_hook(add)
    try:
        yield
    finally:
        pre.remove()
        post.remove()


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_a_reference_file_round_trips_to_the_reference_effect(model, arch, tokens, tmp_path, form):
    state = reference_update(model, form)
    folder = tmp_path / "vectors" / "tiny" / "spilt" / "psychopathy" / f"spilt_{form}"
    folder.mkdir(parents=True)
    torch.save(state, folder / f"layer_{LAYER}.pt")
    assert reference_files(tmp_path) == [folder / f"layer_{LAYER}.pt"]

    differs = arch == "gemma2" and form != "vector"  # the reference bypasses Gemma-2's post-feedforward norm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_reference(folder, model=model)
    placement = [w for w in caught if issubclass(w.category, ReferencePlacementWarning)]
    assert len(placement) == int(differs)
    assert (loaded.form, loaded.layer) == (form, LAYER)
    assert "reference code" in loaded.note and loaded.provenance["method"] == "spilt"
    with reference_applied(model, form, state, M):
        reference = logits(model, tokens)
    with loaded.apply(model, M):
        ours = logits(model, tokens)
    assert (reference - logits(model, tokens)).abs().max() > 1e-2, "the update changes the logits"
    if differs:
        assert (ours - reference).abs().max() > 1e-3
    else:
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_a_stacked_vector_file_gives_the_chosen_concept(model, tmp_path):
    stacked = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
    folder = tmp_path / "spilt_vector"
    folder.mkdir()
    torch.save(stacked, folder / f"layer_{LAYER}.pt")
    loaded = load_reference(folder / f"layer_{LAYER}.pt", concept=2)
    assert torch.equal(loaded.delta_b, stacked[2].float())
    with pytest.raises(ValueError, match="concept 3 is not a row"):
        load_reference(folder, concept=3)


def test_a_multi_concept_dict_and_bad_files_are_read_or_named(model, tmp_path):
    folder = tmp_path / "spilt_lora"
    folder.mkdir()
    state = reference_update(model, "lora")
    torch.save({4: state, 7: reference_update(model, "lora", seed=1)}, folder / f"layer_{LAYER}.pt")
    loaded = load_reference(folder, concept=4)
    assert torch.equal(loaded.lora_a, state["lora_A"].T) and torch.equal(loaded.lora_b, state["lora_B"].T)
    with pytest.raises(ValueError, match=r"holds concepts \[4, 7\], not 0"):
        load_reference(folder)
    wrong = tmp_path / "spilt_vector"
    wrong.mkdir()
    torch.save(state, wrong / "layer_2.pt")
    with pytest.raises(ValueError, match="says vector but the file holds a lora"):
        load_reference(wrong)
    torch.save({**reference_update(model, "local_weight"), "intervention_components": "mlp_out"},
               tmp_path / "layer_3.pt")
    with pytest.raises(ValueError, match="intervention_components is 'mlp_out'"):
        load_reference(tmp_path / "layer_3.pt")


# ----- llama.cpp control vectors -------------------------------------------------------------------------
def test_a_gguf_control_vector_reads_back_equal(model, tmp_path):
    from gguf import GGUFReader

    vector = Intervention.random(model, "vector", LAYER, seed=2, gain=3.0)
    path = to_gguf(vector, tmp_path / "steer.gguf", model=model, multiplier=2.0)
    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == model.config.model_type
    assert fields["controlvector.layer_count"] == 1
    (tensor,) = reader.tensors
    assert tensor.name == f"direction.{LAYER}" and tensor.data.dtype == np.float32
    assert tensor.data.shape == (model.config.hidden_size,)
    np.testing.assert_array_equal(tensor.data, (2.0 * vector.delta_b.detach()).numpy())
    assert read_provenance(path)["layer"] == LAYER and read_provenance(path)["multiplier"] == 2.0

    again = load_gguf(path)
    assert again.layer == LAYER and torch.equal(again.delta_b, 2.0 * vector.delta_b.detach())


def test_gguf_refuses_layer_zero_and_weight_forms(model, tmp_path):
    with pytest.raises(ValueError, match="direction.0"):
        to_gguf(Intervention.random(model, "vector", 0), tmp_path / "zero.gguf")
    with pytest.raises(ValueError, match="only the vector form"):
        to_gguf(Intervention.random(model, "lora", LAYER), tmp_path / "lora.gguf")


# ----- peft adapters -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("embedded:SmolLM2-135M-Instruct", EMBEDDED_HUB_ID),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("random:gemma-2-9b-it", None),
    ("", None),
])
def test_a_peft_adapter_names_the_real_base_model(model, tmp_path, name, expected):
    model.config.name_or_path = name
    folder = Intervention.random(model, "lora", LAYER, seed=4).save_peft(model, tmp_path / "adapter", {"method": "x"})
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == expected
    stored = read_provenance(folder / "adapter_model.safetensors")
    assert (stored["layer"], stored["form"], stored["base_model"], stored["method"]) == (LAYER, "lora", expected, "x")


def test_a_local_folder_is_named_by_its_absolute_path(model, tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    model.config.name_or_path = "./my-model"
    assert base_model_id(model) == str((tmp_path / "my-model").resolve())


# ----- merged checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("form, bias", [("lora", True), ("local_weight", False), ("local_weight", True),
                                        ("vector", True)])
def test_a_merged_checkpoint_equals_the_applied_update(model, arch, tokens, tmp_path, form, bias):
    from transformers import AutoModelForCausalLM

    update = Intervention.random(model, form, LAYER, seed=5, gain=5.0, bias=bias)
    before = logits(model, tokens)
    mergeable = form == "lora" or not bias or arch == "llama"  # only Llama's MLP can carry a bias
    if not mergeable:
        with pytest.raises(ValueError, match="no bias|normalises the MLP output"):
            merged_checkpoint(update, model, tmp_path / "merged", M)
        return
    folder = merged_checkpoint(update, model, tmp_path / "merged", M)
    assert torch.equal(logits(model, tokens), before), "the model itself is unchanged"
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    with update.apply(model, M):
        applied = logits(model, tokens)
    assert (applied - before).abs().max() > 1e-2
    torch.testing.assert_close(logits(merged, tokens), applied, rtol=0, atol=1e-5)
    stored = read_provenance(folder / "model.safetensors")
    assert (stored["layer"], stored["form"], stored["merged_multiplier"]) == (LAYER, form, M)


# ----- provenance ----------------------------------------------------------------------------------------
def test_provenance_is_readable_from_safetensors_metadata(model, tmp_path, pairs):
    from safetensors import safe_open

    update = Intervention.random(model, "local_weight", LAYER, seed=6)
    update.save(tmp_path / "saved", {"model": "embedded:SmolLM2-135M-Instruct", "method": "split"})
    file = tmp_path / "saved" / "intervention.safetensors"
    with safe_open(str(file), "pt") as handle:
        assert handle.metadata()["format"] == "pt"
    stored = read_provenance(file)
    assert stored["model"] == "embedded:SmolLM2-135M-Instruct" and stored["layer"] == LAYER
    assert stored["form"] == "local_weight" and stored["code_version"].startswith("splitlib ")
    assert Intervention.load(tmp_path / "saved").provenance["method"] == "split"


def test_parquet_provenance_from_a_frame_or_a_file(tmp_path, pairs):
    import pyarrow.parquet as pq

    frame = pd.DataFrame({"pair_id": ["a", "b"], "loss_p": [1.0, 2.0]})
    pq.write_table(with_provenance(frame, model="Qwen/Qwen2.5-7B-Instruct", layer=14, data=pairs),
                   tmp_path / "table.parquet")
    stored = read_provenance(tmp_path / "table.parquet")
    assert (stored["model"], stored["layer"], stored["data"]["pairs"]) == ("Qwen/Qwen2.5-7B-Instruct", 14, len(pairs))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "table.parquet"), frame)

    frame.to_parquet(tmp_path / "written.parquet", index=False)
    with pytest.raises(ValueError, match="no splitlib provenance"):
        read_provenance(tmp_path / "written.parquet")
    with_provenance(tmp_path / "written.parquet", data="psychopathy", split="test")
    assert read_provenance(tmp_path / "written.parquet")["split"] == "test"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "written.parquet"), frame)
    assert not list(tmp_path.glob("*tmp*")), "no temporary file is left"


# ----- one entry point -----------------------------------------------------------------------------------
def test_export_writes_each_format(model, tmp_path):
    vector = Intervention.random(model, "vector", LAYER, seed=7)
    lora = Intervention.random(model, "lora", LAYER, seed=7)
    assert (export(vector, "safetensors", tmp_path / "own") / "intervention.safetensors").is_file()
    assert export(vector, "gguf", tmp_path / "cv.gguf").is_file()
    assert (export(lora, "peft", tmp_path / "peft", model) / "adapter_config.json").is_file()
    assert (export(lora, "merged", tmp_path / "merged", model, multiplier=0.5) / "config.json").is_file()
    with pytest.raises(ValueError, match="needs the model"):
        export(lora, "peft", tmp_path / "again")
    with pytest.raises(ValueError, match="unknown export format"):
        export(lora, "onnx", tmp_path / "x")
