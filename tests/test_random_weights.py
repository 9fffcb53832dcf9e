"""Random weights of the paper models' real shapes: configs shipped in the package, no download."""
from __future__ import annotations

import json

import pytest
import torch

from splitlib.models import CONFIG_DIR, load_model, random_config, random_profiles
from splitlib.profiles import PROFILES

# Small enough to build and run in a test; every other field stays the profile's.
TINY = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=49152)
TINY_GEMMA = dict(TINY, head_dim=16, query_pre_attn_scalar=16)
TINY_QWEN = dict(TINY)


def test_every_profile_has_an_architecture_shipped_as_package_data():
    assert random_profiles() == sorted(PROFILES)
    for name in random_profiles():
        fields = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert "layer_types" not in fields  # derived from num_hidden_layers, so overrides stay consistent
    import tomllib

    pyproject = tomllib.loads((CONFIG_DIR.parent.parent / "pyproject.toml").read_text())
    assert "configs/*.json" in pyproject["tool"]["setuptools"]["package-data"]["splitlib"]


def test_the_gemma_config_has_the_documented_shape():
    config = random_config("gemma-2-9b-it")
    assert type(config).__name__ == "Gemma2Config"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (256000, 3584, 14336)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (
        42, 16, 8, 256
    )
    assert (config.query_pre_attn_scalar, config.sliding_window) == (256, 4096)
    assert (config.final_logit_softcapping, config.attn_logit_softcapping) == (30.0, 50.0)
    assert config.hidden_activation == "gelu_pytorch_tanh"
    assert config.tie_word_embeddings is True
    assert len(config.layer_types) == 42 and config.layer_types[:2] == ["sliding_attention", "full_attention"]


def test_the_qwen_config_has_the_documented_shape():
    config = random_config("qwen2.5-7b-it")
    assert type(config).__name__ == "Qwen2Config"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (152064, 3584, 18944)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (28, 28, 4)
    assert config.hidden_size // config.num_attention_heads == 128
    assert config.rope_parameters["rope_theta"] == 1e6
    assert config.tie_word_embeddings is False
    assert getattr(config, "final_logit_softcapping", None) is None


@pytest.mark.parametrize(("profile", "billions"), [("gemma-2-9b-it", 9.24), ("qwen2.5-7b-it", 7.62)])
def test_the_paper_shapes_count_their_parameters(profile, billions):
    """On the meta device: the module tree only, no memory for weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(random_config(profile))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_the_cpu_config_is_the_embedded_models_shape():
    from transformers import AutoConfig

    from splitlib.models import embedded_model_dir

    ours, embedded = random_config("cpu").to_dict(), AutoConfig.from_pretrained(embedded_model_dir()).to_dict()
    differing = {k for k in set(ours) | set(embedded) if ours.get(k) != embedded.get(k)}
    assert differing <= {"_name_or_path", "dtype", "transformers_version", "_model_name_or_path"}, differing


def test_random_cpu_builds_the_embedded_shape_with_seeded_weights():
    model, tokenizer = load_model("random:cpu")
    embedded, _ = load_model()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in embedded.state_dict().items()}
    assert model.config.name_or_path == "random:cpu"
    assert next(model.parameters()).dtype == torch.float32 and not any(p.requires_grad for p in model.parameters())
    assert not model.training
    weight = model.get_input_embeddings().weight
    assert not torch.equal(weight, embedded.get_input_embeddings().weight)
    assert tokenizer.vocab_size == 49152
    with torch.no_grad():
        assert torch.isfinite(model(tokenizer("Hello there", return_tensors="pt").input_ids).logits).all()


def test_the_same_seed_gives_the_same_weights():
    def weights(**kwargs):
        model, _ = load_model("random:cpu", config_overrides={"num_hidden_layers": 2}, **kwargs)
        return model.state_dict()

    default, again, other = weights(), weights(seed=PROFILES["cpu"].seed), weights(seed=7)
    assert all(torch.equal(default[k], again[k]) for k in default)
    assert not torch.equal(default["model.layers.0.mlp.down_proj.weight"], other["model.layers.0.mlp.down_proj.weight"])
    before = torch.random.get_rng_state()
    weights(seed=3)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's generator is left alone


@pytest.mark.parametrize(("profile", "overrides", "architecture", "attention"), [
    ("gemma-2-9b-it", TINY_GEMMA, "Gemma2ForCausalLM", "eager"),
    ("qwen2.5-7b-it", TINY_QWEN, "Qwen2ForCausalLM", "sdpa"),
])
def test_shrunken_paper_architectures_run_a_forward(profile, overrides, architecture, attention, tokenizer):
    model, stand_in = load_model(f"random:{profile}", device="cpu", dtype="float32", config_overrides=overrides)
    assert type(model).__name__ == architecture
    assert model.config._attn_implementation == attention  # the profile's choice
    assert model.config.name_or_path == f"random:{profile}"
    ids = stand_in("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], overrides["vocab_size"]) and torch.isfinite(logits).all()
    if profile == "gemma-2-9b-it":
        assert logits.abs().max() <= 30.0  # the final soft-capping is part of the architecture


def test_a_profile_object_and_random_weights_true_build_the_same_model():
    from dataclasses import replace

    small = {"num_hidden_layers": 1}
    by_name, _ = load_model("random:cpu", config_overrides=small)
    by_flag, _ = load_model(PROFILES["cpu"], random_weights=True, config_overrides=small)
    by_field, _ = load_model(replace(PROFILES["cpu"], model="random:cpu"), config_overrides=small)
    by_model_id, _ = load_model(PROFILES["cpu"].model, random_weights=True, config_overrides=small)
    reference = by_name.state_dict()
    for model in (by_flag, by_field, by_model_id):
        assert model.config.name_or_path == "random:cpu"
        assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_a_paper_profile_with_random_weights_picks_its_dtype():
    model, _ = load_model(PROFILES["qwen2.5-7b-it"], random_weights=True, device="cpu",
                          config_overrides=TINY_QWEN)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert str(next(model.parameters()).device) == "cpu"


def test_bad_names_and_misplaced_options_are_clear():
    with pytest.raises(ValueError, match=r"no random-weight architecture for profile 'llama-3-8b'; choose one of "
                                         r"random:cpu, random:gemma-2-9b-it, random:qwen2\.5-7b-it"):
        load_model("random:llama-3-8b")
    with pytest.raises(ValueError, match="random weights only"):
        load_model(seed=3)
    with pytest.raises(ValueError, match="the stand-in tokenizer has 49152 ids, more than the 1000 of random:cpu"):
        load_model("random:cpu", config_overrides={"vocab_size": 1000})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError,
                           match="random:gemma-2-9b-it is set to run on cuda, but this machine has no CUDA"):
            load_model("random:gemma-2-9b-it", config_overrides=TINY_GEMMA)


def test_profiles_name_their_attention():
    assert PROFILES["gemma-2-9b-it"].attn_implementation == "eager"
    assert PROFILES["qwen2.5-7b-it"].attn_implementation == "sdpa"
    assert PROFILES["cpu"].attn_implementation is None
