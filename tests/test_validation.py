"""One validation layer at the public API: each bad input raises one clear error (TypeError for a
wrong type, ValueError or DataError for a bad value, FileNotFoundError for a missing model) that
names the argument, before anything is computed or written to the cache."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import QUESTIONS, tiny_model

from splitlib import Intervention, geometry
from splitlib.checks import check_grid, check_int, check_number
from splitlib.data import DataError, PolarityPair, choice_pairs, load_task, statement_pairs
from splitlib.fit import fit_preference, fit_tanh, fit_utility
from splitlib.models import load_model
from splitlib.profiles import EngineSettings, TrainConfig, get_profile
from splitlib.sweep import naive_sweep, run_sweep
from splitlib.train import (
    config_for,
    diffmean,
    evaluation_multipliers,
    residual_norm,
    train_all,
    train_intervention,
)

LAYER = 2
CPU = get_profile("cpu")
CONFIG = TrainConfig(epochs=1, batch_size=3, grad_accum=1, lr=0.05, multipliers=(0.5, 1.0))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", vocab_size=49152)  # 4 layers: valid layers are 0..3


@pytest.fixture
def pairs() -> list[PolarityPair]:
    return [PolarityPair(f"p{i}", q, a, b, "test") for i, (q, a, b) in enumerate(QUESTIONS[:3])]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache; `written()` lists whatever a call left in it."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SPLITLIB_CACHE", str(root))
    monkeypatch.delenv("SPLITLIB_DATA", raising=False)
    monkeypatch.setenv("SPLITLIB_DATA_MIRROR", "http://127.0.0.1:9")  # no download can succeed

    class Cache:
        @staticmethod
        def written() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []

    return Cache()


def _vector(model) -> Intervention:
    return Intervention.random(model, "vector", LAYER, seed=1)


# ----- multiplier grids ----------------------------------------------------------------------------------
def test_a_numpy_grid_is_a_grid(model, tokenizer, pairs):
    table = run_sweep(model, tokenizer, pairs, _vector(model), np.array([0.0, 1.0]), cache=False, progress=False)
    assert sorted(table.m.unique()) == [0.0, 1.0]


BAD_GRIDS = [
    ([0.0, 1.0, 1.0], ValueError, "repeats a multiplier"),
    ([0.0, float("nan")], ValueError, "must be finite"),
    ([0.0, float("inf")], ValueError, "must be finite"),
    ([], ValueError, "at least one multiplier"),
    ("0.5", TypeError, "must be a sequence or array of numbers"),
    (2.0, TypeError, "must be a sequence or array of numbers"),
    (["a"], TypeError, "must hold numbers only"),
    ([[0.0, 1.0]], ValueError, "one-dimensional"),
]
SWEEP_PATHS = ["run_sweep", "naive_sweep", "capture_activations", "steering_measures"]


def _sweep_path(path, model, tokenizer, pairs, intervention, grid):
    if path == "run_sweep":
        return run_sweep(model, tokenizer, pairs, intervention, grid, progress=False)
    if path == "naive_sweep":
        return naive_sweep(model, tokenizer, pairs, intervention, grid)
    if path == "capture_activations":
        return geometry.capture_activations(model, tokenizer, pairs, intervention, grid, (3,), cache=True,
                                            progress=False)
    return geometry.steering_measures(model, tokenizer, pairs, intervention, grid, {}, progress=False)


@pytest.mark.parametrize("path", SWEEP_PATHS)
@pytest.mark.parametrize(("grid", "error", "message"), BAD_GRIDS)
def test_every_sweep_path_refuses_a_bad_grid(model, tokenizer, pairs, cache, path, grid, error, message):
    with pytest.raises(error, match=rf"multipliers.*{message}|{message}.*multipliers"):
        _sweep_path(path, model, tokenizer, pairs, _vector(model), grid)
    assert cache.written() == []


@pytest.mark.parametrize("path", SWEEP_PATHS[:3])
def test_m_other_than_zero_needs_an_intervention(model, tokenizer, pairs, cache, path):
    with pytest.raises(ValueError, match=r"multipliers are \[0\.0, 5\.0\], but without an intervention only m = 0"):
        _sweep_path(path, model, tokenizer, pairs, None, [0.0, 5.0])
    assert cache.written() == []


@pytest.mark.parametrize(("multipliers", "error", "message"), [
    *[(grid, error, message) for grid, error, message in BAD_GRIDS],
    ((0.0, 1.0), ValueError, r"the \|m\| drawn per example and must be > 0"),
    ((-1.0, 1.0), ValueError, "must be > 0"),
])
def test_a_training_config_refuses_a_bad_grid(multipliers, error, message):
    with pytest.raises(error, match=f"TrainConfig.multipliers.*{message}|{message}"):
        dataclasses.replace(CONFIG, multipliers=multipliers)


@pytest.mark.parametrize("name", ["vector_grid", "weight_grid", "relative_grid"])
def test_a_profile_refuses_a_bad_evaluation_grid(name):
    with pytest.raises(ValueError, match=f"Profile.{name} are .*repeats a multiplier"):
        dataclasses.replace(CPU, **{name: (0.0, 1.0, 1.0)})


def test_a_diffmean_evaluation_grid_needs_a_positive_unit(model):
    vector = _vector(model)
    with pytest.raises(ValueError, match="unit must be > 0, got 0"):
        evaluation_multipliers(CPU, "diffmean", "vector", vector, 0.0)
    with pytest.raises(ValueError, match="unit must be finite"):
        evaluation_multipliers(CPU, "diffmean", "vector", vector, float("nan"))


# ----- profiles, tasks, methods ----------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: load_task("psychopathy", "cpu"), TypeError, r"profile must be a Profile, got str 'cpu'; "
                                                         r"pass splitlib.get_profile\('cpu'\)"),
    (lambda: load_task(3, CPU), TypeError, "task must be a str, one of psychopathy, powerseeking, axbench; got int 3"),
    (lambda: load_task("psychopathy", CPU, source=None), TypeError, "data source must be a str"),
    (lambda: load_task("axbench", CPU), ValueError, "axbench task needs the model and tokenizer"),
    (lambda: config_for("cpu", "psychopathy", "split", "vector"), TypeError, "profile must be a Profile"),
    (lambda: config_for(CPU, "unknown", "split", "vector"), ValueError,
     "unknown task 'unknown'; choose one of psychopathy, powerseeking, axbench"),
    (lambda: config_for(CPU, "psychopathy", "unknown", "vector"), ValueError,
     "unknown method 'unknown'; choose one of diffmean, sft, reps, split"),
    (lambda: config_for(CPU, "psychopathy", "split", 3), TypeError, "form must be a str"),
    (lambda: config_for(dataclasses.replace(CPU, split_configs={}, method_schedules={}), "psychopathy", "split",
                        "vector"), ValueError,
     "profile 'cpu' has no training config for task 'psychopathy' and form 'vector'"),
    (lambda: get_profile(3), TypeError, "profile name must be a profile.s name or a profile file.s path, got int 3"),
    (lambda: evaluation_multipliers("cpu", "split", "vector", None, 1.0), TypeError, "profile must be a Profile"),
])
def test_profile_task_and_method_arguments(cache, call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert cache.written() == [], "nothing is read from the network nor written before the check"


def test_train_all_checks_the_task_before_training_anything(model, tokenizer, pairs, cache):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        train_all(model, tokenizer, pairs, CPU, "nope", progress=False)
    with pytest.raises(TypeError, match="profile must be a Profile"):
        train_all(model, tokenizer, pairs, "cpu", "psychopathy", progress=False)
    assert cache.written() == []


# ----- layers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [4, 99, -1])
@pytest.mark.parametrize("call", ["train", "diffmean", "residual_norm", "initial", "hidden_states"])
def test_layers_are_range_checked_everywhere(model, tokenizer, pairs, cache, call, layer):
    with pytest.raises(ValueError, match=rf"layer {layer} is out of range: LlamaForCausalLM has layers 0\.\.3"):
        if call == "train":
            train_intervention(model, tokenizer, pairs, "sft", "vector", layer, CONFIG, progress=False)
        elif call == "diffmean":
            diffmean(model, tokenizer, pairs, layer)
        elif call == "residual_norm":
            residual_norm(model, tokenizer, pairs, layer)
        elif call == "initial":
            Intervention.initial(model, "vector", layer)
        else:
            geometry.default_hidden_states(model, layer)
    assert cache.written() == []


def test_a_layer_must_be_an_int(model, tokenizer, pairs):
    with pytest.raises(TypeError, match="layer must be an int, got str '2'"):
        Intervention("vector", "2", delta_b=torch.zeros(32))
    with pytest.raises(TypeError, match="layer must be an int, got float 2.0"):
        train_intervention(model, tokenizer, pairs, "sft", "vector", 2.0, CONFIG, cache=False)


# ----- data files -------------------------------------------------------------------------------------------
GOOD = {"question": "Q?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"question": "Caf\xe9?"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8"):
        statement_pairs(path)


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("answer_matching_behavior", None, "null"),
    ("answer_not_matching_behavior", 1, "1"),
    ("question", ["a"], r'\["a"\]'),
])
def test_a_non_string_field_names_file_line_and_field(tmp_path, field, value, shown):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, field: value}) + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: {field} must be a string, got {shown}"):
        statement_pairs(path)


def test_a_null_choice_question_names_file_and_line(tmp_path):
    path = tmp_path / "choices.jsonl"
    path.write_text(json.dumps({**GOOD, "question": None, "answer_matching_behavior": "(A)"}) + "\n")
    with pytest.raises(DataError, match=r"choices\.jsonl:1: question must be a string, got null"):
        choice_pairs(path)


# ----- models ----------------------------------------------------------------------------------------------
def test_a_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        load_model(str(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(missing)  # a Path too
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="a folder without config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(TypeError, match="load_model's source must be a Profile.*got int 3"):
        load_model(3)


# ----- interventions ----------------------------------------------------------------------------------------
def _tensors(form: str) -> dict[str, torch.Tensor]:
    return {"vector": {"delta_b": torch.ones(32)},
            "lora": {"lora_a": torch.ones(2, 48), "lora_b": torch.ones(32, 2)},
            "local_weight": {"delta_w": torch.ones(32, 48), "delta_b": torch.ones(32)}}[form]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(("form", "name"), [("vector", "delta_b"), ("lora", "lora_a"), ("lora", "lora_b"),
                                            ("local_weight", "delta_w"), ("local_weight", "delta_b")])
def test_non_finite_updates_are_refused_when_built(form, name, bad):
    tensors = _tensors(form)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = bad
    with pytest.raises(ValueError, match=rf"{name} holds NaN or infinite values \(1 of \d+ entries\)"):
        Intervention(form, LAYER, **tensors)


def test_non_finite_updates_and_multipliers_are_refused_when_applied(model, tokenizer, pairs, cache):
    vector = _vector(model)
    with pytest.raises(ValueError, match="multiplier must be finite, got nan"):
        with vector.apply(model, float("nan")):
            pass
    with pytest.raises(TypeError, match="multiplier must be a number, got str"):
        with vector.apply(model, "1"):
            pass
    with vector.apply(model, 1.0) as live, pytest.raises(ValueError, match="multiplier must be finite, got inf"):
        live.multiplier = float("inf")
    with torch.no_grad():
        vector.delta_b[0] = float("nan")  # edited in place after it was built
    with pytest.raises(ValueError, match=r"delta_b holds NaN or infinite values \(1 of 32"):
        with vector.apply(model, 1.0):
            pass
    with pytest.raises(ValueError, match="delta_b holds NaN"):
        run_sweep(model, tokenizer, pairs, vector, [0.0, 1.0], progress=False)
    assert cache.written() == []


def test_a_random_update_needs_a_finite_gain(model):
    with pytest.raises(ValueError, match="gain must be finite"):
        Intervention.random(model, "vector", LAYER, gain=float("inf"))


# ----- pairs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "error", "message"), [
    (("Q?", "Yes", "Yes"), DataError, r"x\.jsonl:7: A_p equals A_n \('Yes'\) in pair 'p'"),
    (("Q?", " Yes", "Yes "), DataError, "A_p equals A_n"),
    (("Q?", "  ", "No"), DataError, r"empty A_p \(PolarityPair.positive = '  '"),
    (("Q?", "Yes", ""), DataError, r"empty A_n \(PolarityPair.negative = ''"),
    (("", "Yes", "No"), DataError, r"empty question \(PolarityPair.question = ''"),
    (("Q?", None, "No"), TypeError, "PolarityPair.positive must be a str, got NoneType None"),
])
def test_a_pair_is_checked_when_built(fields, error, message):
    with pytest.raises(error, match=message):
        PolarityPair("p", *fields, "x.jsonl:7")


def test_an_empty_pair_id_is_refused():
    with pytest.raises(DataError, match=r"empty id \(PolarityPair.id = ''"):
        PolarityPair("", "Q?", "Yes", "No", "t")


@pytest.mark.parametrize("call", ["run_sweep", "train", "capture", "diffmean"])
def test_duplicate_pair_ids_are_refused(model, tokenizer, pairs, cache, call):
    twice = pairs + [PolarityPair("p1", "Another question?", "Yes", "No", "t")]
    with pytest.raises(ValueError, match=r"pair ids repeat 'p1' \(at 1 and 3\)"):
        if call == "run_sweep":
            run_sweep(model, tokenizer, twice, _vector(model), [0.0, 1.0], progress=False)
        elif call == "train":
            train_intervention(model, tokenizer, twice, "split", "vector", LAYER, CONFIG, progress=False)
        elif call == "capture":
            geometry.capture_activations(model, tokenizer, twice, None, [0.0], (3,), cache=True, progress=False)
        else:
            diffmean(model, tokenizer, twice, LAYER)
    assert cache.written() == []


def test_pairs_must_be_a_list_of_pairs(model, tokenizer, pairs):
    with pytest.raises(TypeError, match=r"the sweep's pairs\[1\] must be a PolarityPair, got tuple"):
        run_sweep(model, tokenizer, [pairs[0], ("q", "a", "b")], None, [0.0], cache=False)
    with pytest.raises(TypeError, match="the training set's pairs must be a list of PolarityPair, got str"):
        train_intervention(model, tokenizer, "pairs", "split", "vector", LAYER, CONFIG, cache=False)


@pytest.mark.parametrize("limit", [-1, 0])
@pytest.mark.parametrize("call", ["run_sweep", "train", "capture"])
def test_max_answer_tokens_must_be_positive(model, tokenizer, pairs, cache, call, limit):
    with pytest.raises(ValueError, match=f"max_answer_tokens must be a positive int, got {limit}"):
        if call == "run_sweep":
            run_sweep(model, tokenizer, pairs, None, [0.0], max_answer_tokens=limit, progress=False)
        elif call == "train":
            train_intervention(model, tokenizer, pairs, "split", "vector", LAYER, CONFIG, max_answer_tokens=limit,
                               progress=False)
        else:
            geometry.capture_activations(model, tokenizer, pairs, None, [0.0], (3,), cache=True,
                                         max_answer_tokens=limit, progress=False)
    assert cache.written() == []


# ----- training options ------------------------------------------------------------------------------------
def test_lora_rank_must_be_at_least_one(model, tokenizer, pairs, cache):
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        train_intervention(model, tokenizer, pairs, "split", "lora", LAYER, CONFIG, rank=0, progress=False)
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        Intervention.initial(model, "lora", LAYER, rank=0)
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        Intervention.random(model, "lora", LAYER, rank=0)
    with pytest.raises(ValueError, match=r"lora_a has shape \(0, 48\): LoRA rank must be >= 1"):
        Intervention("lora", LAYER, lora_a=torch.zeros(0, 48), lora_b=torch.zeros(32, 0))
    assert cache.written() == []


@pytest.mark.parametrize(("pair_types", "error", "message"), [
    (("foo",), ValueError, "unknown TrainConfig.pair_types entry 'foo'; choose one of add, sub"),
    (("add", "add"), ValueError, "TrainConfig.pair_types repeat 'add'"),
    ((), ValueError, "TrainConfig.pair_types is empty"),
    ("add", TypeError, "TrainConfig.pair_types must be a tuple of add / sub, got str 'add'"),
])
def test_unknown_pair_types_are_refused(pair_types, error, message):
    with pytest.raises(error, match=message):
        dataclasses.replace(CONFIG, pair_types=pair_types)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: dataclasses.replace(CONFIG, batch_size=0), "TrainConfig.batch_size must be a positive int, got 0"),
    (lambda: dataclasses.replace(CONFIG, epochs=-1), "TrainConfig.epochs must be a positive int, got -1"),
    (lambda: dataclasses.replace(CONFIG, grad_accum=0), "TrainConfig.grad_accum must be a positive int"),
    (lambda: dataclasses.replace(CONFIG, lr=0.0), "TrainConfig.lr must be > 0, got 0"),
    (lambda: dataclasses.replace(CONFIG, lr=float("nan")), "TrainConfig.lr must be finite"),
    (lambda: dataclasses.replace(CONFIG, dropout=1.0), "TrainConfig.dropout must be >= 0 and < 1, got 1"),
    (lambda: dataclasses.replace(CONFIG, gamma=-1.0), "TrainConfig.gamma must be >= 0, got -1"),
    (lambda: EngineSettings(pairs_per_row=0), "EngineSettings.pairs_per_row must be a positive int, got 0"),
    (lambda: EngineSettings(row_tokens=-5), "EngineSettings.row_tokens must be a positive int, got -5"),
    (lambda: EngineSettings(pad_to=0), "EngineSettings.pad_to must be a positive int, got 0"),
    (lambda: EngineSettings(token_budget=0), "EngineSettings.token_budget must be a positive int, got 0"),
    (lambda: geometry.CaptureOptions(tokens_per_answer=0), "CaptureOptions.tokens_per_answer must be a positive"),
    (lambda: dataclasses.replace(CPU, lora_rank=0), "Profile.lora_rank must be a positive int, got 0"),
    (lambda: dataclasses.replace(CPU, max_answer_tokens=0), "Profile.max_answer_tokens must be a positive int"),
    (lambda: dataclasses.replace(CPU, generation_tokens=0), "Profile.generation_tokens must be a positive int"),
    (lambda: dataclasses.replace(CPU, layer=-1), "Profile.layer must be a non-negative int, got -1"),
])
def test_sizes_and_limits_must_be_positive(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(("make", "message"), [
    (lambda: EngineSettings(pairs_per_row=2.5), "EngineSettings.pairs_per_row must be an int, got float 2.5"),
    (lambda: EngineSettings(pad_to=True), "EngineSettings.pad_to must be an int, got bool True"),
    (lambda: dataclasses.replace(CONFIG, lr="0.1"), "TrainConfig.lr must be a number, got str '0.1'"),
    (lambda: dataclasses.replace(CPU, engine={}), "Profile.engine must be a EngineSettings, got dict"),
    (lambda: geometry.CaptureOptions(settings=None), "CaptureOptions.settings must be a EngineSettings"),
])
def test_options_of_the_wrong_type(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_train_options_are_checked_before_training(model, tokenizer, pairs, cache):
    with pytest.raises(TypeError, match="config must be a TrainConfig, got dict"):
        train_intervention(model, tokenizer, pairs, "split", "vector", LAYER, {"lr": 0.1}, progress=False)
    with pytest.raises(TypeError, match="settings must be a EngineSettings"):
        train_intervention(model, tokenizer, pairs, "split", "vector", LAYER, CONFIG, settings=4, progress=False)
    assert cache.written() == []


# ----- degenerate data: fits and geometry ------------------------------------------------------------------
GRID = np.linspace(-3, 3, 13)


@pytest.mark.parametrize("fitter", [fit_preference, fit_utility, fit_tanh])
def test_a_fit_that_overflows_is_flagged(fitter):
    huge = 1e155 * (1 + np.exp(-GRID**2))
    result = fitter(GRID, huge)
    assert not result.ok and "too large to fit" in result.flag and "overflows" in result.flag
    assert result.derived == {}


def test_a_fit_with_non_finite_parameters_is_never_ok(monkeypatch):
    from splitlib import fit

    monkeypatch.setattr(fit, "_from_unit", lambda kind, theta, *a: [float("inf")] * len(theta))
    result = fit.fit_utility(GRID, np.exp(-GRID**2))
    assert not result.ok and "not finite" in result.flag and "beta_u" in result.flag
    assert result.derived == {}


def test_restarts_must_be_positive():
    with pytest.raises(ValueError, match="restarts must be a positive int, got 0"):
        fit_tanh(GRID, np.tanh(GRID), restarts=0)


def test_constant_activations_are_refused():
    labels = np.array([0, 1] * 20)
    with pytest.raises(ValueError, match="reference activations are constant: all 40 rows are the same vector"):
        geometry.fit_reference(np.ones((40, 8)), labels)


def test_answers_with_one_mean_have_no_diffmean_direction():
    rng = np.random.default_rng(0)
    half = rng.normal(size=(20, 8))
    x, labels = np.concatenate([half, half]), np.array([1] * 20 + [0] * 20)
    with pytest.raises(ValueError, match="DiffMean direction .* has norm 0.0"):
        geometry.fit_reference(x, labels, n_neighbours=3, variance=2)


def test_a_singular_covariance_is_flagged():
    # rows +v and -v: Ledoit-Wolf finds nothing to shrink, and the covariance v v^T has rank 1
    signs = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)
    x = np.outer(signs, np.arange(1.0, 9.0))
    labels = (signs > 0).astype(int)
    with pytest.warns(RuntimeWarning, match="Ledoit-Wolf covariance is singular"):
        reference = geometry.fit_reference(x, labels, n_neighbours=3, variance=1)
    assert not reference.ok and "Mahalanobis" in reference.flag


def test_a_well_spread_reference_is_not_flagged():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    labels = (x[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = geometry.fit_reference(x, labels, n_neighbours=3)
    assert reference.ok and reference.flag == ""


# ----- the helpers themselves ------------------------------------------------------------------------------
def test_the_shared_checks():
    assert check_int("n", np.int64(3), low=1) == 3
    assert check_number("x", np.float32(0.5), 0, 1) == 0.5
    assert check_grid("grid", (2, 0.5)) == [2.0, 0.5]
    assert check_grid("grid", torch.tensor([0.0, 1.0])) == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"n must be an int in 0\.\.3, got 4"):
        check_int("n", 4, low=0, high=3)
    with pytest.raises(TypeError, match="n must be an int, got bool True"):
        check_int("n", True)
