"""Profiles from TOML files: inheritance, nested overrides, errors that name file and field."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_model

from splitlib import profiles
from splitlib.models import embedded_model_dir, load_model
from splitlib.profiles import PROFILES, ProfileError, get_profile, profile_toml


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "mine.toml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_built_in_profile_round_trips_through_its_toml(write, name):
    path = write(profile_toml(PROFILES[name]), f"copy-of-{name}.toml")
    assert get_profile(str(path)) == replace(PROFILES[name], name=f"copy-of-{name}")


def test_a_file_inherits_and_overrides_nested_fields(write):
    path = write("""
inherit = "qwen2.5-7b-it"
model = "/models/my-finetune"
layer = 12
cell_timeout = 60
vector_grid = [-2, 0, 2]
unset = ["max_answer_tokens", "engine.token_budget", "attn_implementation"]

[engine]
row_tokens = 1024

[splits.psychopathy]
train = 50

[split_configs.psychopathy.vector]
lr = 0.05

[load_options]
device_map = "auto"
quantization_config = { quant_method = "bitsandbytes", load_in_4bit = true }
""")
    base, profile = PROFILES["qwen2.5-7b-it"], get_profile(path)
    assert (profile.name, profile.model, profile.layer, profile.cell_timeout) == ("mine", "/models/my-finetune", 12, 60)
    assert profile.vector_grid == (-2.0, 0.0, 2.0) and all(isinstance(m, float) for m in profile.vector_grid)
    assert profile.max_answer_tokens is None and profile.attn_implementation is None
    assert profile.engine == replace(base.engine, row_tokens=1024, token_budget=None)
    assert profile.splits["psychopathy"] == replace(base.splits["psychopathy"], train=50)
    assert profile.splits["axbench"] == base.splits["axbench"]
    assert profile.split_configs[("psychopathy", "vector")] == replace(base.split_configs[("psychopathy", "vector")],
                                                                      lr=0.05)
    assert profile.load_options == {"device_map": "auto",
                                    "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    assert (profile.dtype, profile.device) == ("bfloat16", "cuda")
    assert not profile.paper_setup  # its own split sizes: the run box does not call it the paper's setup
    assert "mine.toml" in profile.description


def test_a_file_keeps_the_paper_setup_unless_it_changes_the_splits(write):
    assert get_profile(write('inherit = "gemma-2-9b-it"\nmodel = "/models/mine"\nlayer = 12\n')).paper_setup
    smaller = write('inherit = "gemma-2-9b-it"\n[splits.axbench]\ntrain = 8\n', "small.toml")
    assert not get_profile(smaller).paper_setup
    said = write('inherit = "gemma-2-9b-it"\npaper_setup = true\n[splits.axbench]\ntrain = 8\n', "said.toml")
    assert get_profile(said).paper_setup


def test_the_default_parent_is_cpu_and_a_file_may_inherit_a_file(write):
    write('inherit = "cpu"\nlayer = 3\n', "base.toml")
    child = get_profile(write('inherit = "base.toml"\nname = "child"\nseed = 7\n'))
    assert (child.name, child.layer, child.seed, child.model) == ("child", 3, 7, PROFILES["cpu"].model)
    plain = get_profile(write("seed = 1\n", "plain.toml"))
    assert plain == replace(PROFILES["cpu"], name="plain", seed=1, description=plain.description)


def test_a_file_cannot_inherit_itself(write):
    path = write('inherit = "mine.toml"\n')
    with pytest.raises(ProfileError, match="inherits itself"):
        get_profile(path)


@pytest.mark.parametrize("text, field, expected", [
    ("layer = [", None, "is not valid TOML"),
    ("lyer = 3", "lyer", "is not a field of Profile (did you mean 'layer'?)"),
    ('layer = "12"', "layer", "must be an integer, got string '12'"),
    ("layer = true", "layer", "must be an integer, got boolean True"),
    ("cell_timeout = 1.5", "cell_timeout", "must be an integer, got float 1.5"),
    ("vector_grid = [1, \"a\"]", "vector_grid[1]", "must be a number, got string 'a'"),
    ("engine = 3", "engine", "must be a table, got integer 3"),
    ("[engine]\nrow_token = 8", "engine.row_token", "is not a field of EngineSettings (did you mean 'row_tokens'?)"),
    ("[splits.psychopathy]\ntrain = 0", "splits.psychopathy", "SplitSizes.train must be a positive int"),
    ("[split_configs.psychopathy.vector]\nlr = -1", "split_configs.psychopathy.vector", "TrainConfig.lr must be > 0"),
    ("[split_configs.psychopathy.steering]\nlr = 1.0", "split_configs.psychopathy.steering", "missing 4 required"),
    ('unset = ["layer"]', "layer", "cannot be unset: it is not optional"),
    ('inherit = "gpt-5"', "inherit", "names no built-in profile"),
    ('name = "cpu"', "name", "not a built-in profile's"),
    ("[load_options]\ndtype = \"float16\"", None, "Profile.load_options may not set ['dtype']"),
])
def test_a_bad_file_names_itself_the_field_and_what_was_expected(write, text, field, expected):
    path = write(text + "\n")
    with pytest.raises(ProfileError) as error:
        get_profile(str(path))
    message = str(error.value)
    assert str(path) in message and expected in message
    assert field is None or f"field '{field}'" in message


def test_a_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(ProfileError, match=r"profile file 'nowhere/x.toml' not found \(looked for .*nowhere/x.toml"):
        get_profile("nowhere/x.toml")


def test_the_environment_variable_takes_a_path_relative_to_the_cwd_or_the_project(write, tmp_path, monkeypatch):
    write("layer = 2\n", "env.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPLITLIB_PROFILE", "env.toml")
    assert get_profile().layer == 2
    elsewhere = tmp_path / "notebooks"  # a chapter runs in its own folder, as under nbmake
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(profiles, "PROJECT_ROOT", tmp_path)
    assert get_profile().name == "env"


def test_a_profile_points_at_a_local_folder_with_its_loading_options(write, tmp_path):
    folder = tmp_path / "tiny"
    tiny_model("qwen2", vocab_size=49152).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((embedded_model_dir() / name).read_bytes())
    profile = get_profile(write(f'model = "{folder}"\nlayer = 1\ndtype = "bfloat16"\n'
                                "[load_options]\nuse_cache = false\n"))  # an option transformers puts in the config
    model, _ = load_model(profile)
    assert type(model).__name__ == "Qwen2ForCausalLM" and next(model.parameters()).dtype == torch.bfloat16
    assert model.config.use_cache is False and model.config.name_or_path == str(folder)


def test_cell_timeouts_and_reserved_loading_options():
    assert PROFILES["cpu"].cell_timeout == 1800 and PROFILES["gemma-2-9b-it"].cell_timeout == 7200
    with pytest.raises(ValueError, match="load_options may not set"):
        replace(PROFILES["cpu"], load_options={"attn_implementation": "eager"})
