"""Model loading, profiles and layer lookup."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from splitlib import describe_model, get_profile, load_model
from splitlib import models as models_module
from splitlib.models import check_layer, decoder_layers, down_projection, embedded_model_dir, parse_dtype
from splitlib.profiles import EMBEDDED_MODEL, PROFILES


def test_profiles_follow_the_paper():
    assert get_profile("gemma-2-9b-it").layer == 20 and get_profile("qwen2.5-7b-it").layer == 14
    for name in ("gemma-2-9b-it", "qwen2.5-7b-it"):
        profile = PROFILES[name]
        assert (profile.dtype, profile.device) == ("bfloat16", "cuda")
        assert {task: (s.train, s.test) for task, s in profile.splits.items()} == {
            "psychopathy": (500, 100), "powerseeking": (500, 200), "axbench": (64, 8)
        }
    assert get_profile("cpu").model == EMBEDDED_MODEL


def test_the_environment_variable_picks_the_profile(monkeypatch):
    monkeypatch.delenv("SPLITLIB_PROFILE", raising=False)
    assert get_profile().name == "cpu"
    monkeypatch.setenv("SPLITLIB_PROFILE", "qwen2.5-7b-it")
    assert get_profile().name == "qwen2.5-7b-it"
    monkeypatch.setenv("SPLITLIB_PROFILE", "gpt-5")
    with pytest.raises(ValueError, match=r"unknown profile 'gpt-5' \(from the \$SPLITLIB_PROFILE\)"):
        get_profile()


def test_bad_dtype_and_layers():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        parse_dtype("float8")
    model = tiny_model("llama")
    assert check_layer(model, 3) == 3
    with pytest.raises(ValueError, match=r"layer -1 is out of range: LlamaForCausalLM has layers 0\.\.3"):
        down_projection(model, -1)
    with pytest.raises(ValueError, match="cannot find the decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_a_killed_dequantisation_is_not_picked_up(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(models_module, "embedded_gguf_path", lambda: _fake_gguf(tmp_path))

    def killed(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models_module, "_dequantise", killed)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir()
    assert not list((tmp_path / "models").glob("smollm2*"))

    monkeypatch.setattr(models_module, "_dequantise",
                        lambda gguf, out: (out / "model.safetensors").write_bytes(b"whole"))
    folder = embedded_model_dir()
    assert (folder / "model.safetensors").read_bytes() == b"whole"


def _fake_gguf(root):
    path = root / "fake.gguf"
    path.write_bytes(b"gguf")
    return path


def test_the_embedded_model_copy_matches_the_gguf():
    """The cached safetensors copy gives bit-identical logits to a fresh GGUF load."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model()
    info = describe_model(model)
    assert (info.architecture, info.n_layers, info.hidden_size, info.intermediate_size) == (
        "LlamaForCausalLM", 30, 576, 1536
    )
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    gguf = models_module.embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokens = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reference(tokens).logits)


def test_any_local_folder_loads_with_a_dtype(tmp_path):
    source = tiny_model("qwen2")
    source.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((embedded_model_dir() / name).read_bytes())
    model, tokenizer = load_model(str(tmp_path), dtype="bfloat16", device="cpu")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer("hi").input_ids
