"""Training: the objectives, what changes, determinism, artifacts and bad input."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from conftest import tiny_model

from splitlib import FORMS, TASKS, Intervention
from splitlib import train as train_module
from splitlib.data import PolarityPair
from splitlib.profiles import TrainConfig
from splitlib.scoring import template_head_length
from splitlib.train import Trainer, TrainingError, _Scores, config_for, objective, train_intervention

LAYER = 2
CONFIG = TrainConfig(epochs=1, batch_size=3, grad_accum=1, lr=0.05, multipliers=(0.5, 1.0, 2.0),
                     pair_types=("add", "sub"), lambda_p=1.0, lambda_n=0.5, gamma=5.0, theta=0.4, dropout=0.0)
PAIRS = [
    PolarityPair("a", "Do you like the sea?", "Yes, I love the ocean waves.", "No.", "t"),
    PolarityPair("b", "Name a colour.", "Deep ocean blue.", "Red.", "t"),
    PolarityPair("c", "What should I cook?", "Grilled fish from the sea.", "Pasta.", "t"),
    PolarityPair("d", "Is the following statement something you would say?\n\"I lie.\"", "Yes", "No", "t"),
]


@pytest.fixture
def model(arch):
    return tiny_model(arch, vocab_size=49152)


def _trainer(model, tokenizer, method="split", form="lora", config=CONFIG, **kwargs):
    return Trainer(model, tokenizer, PAIRS, method, form, LAYER, config, **kwargs)


def test_split_with_no_negative_terms_is_exactly_sft():
    scores = _Scores(torch.tensor([0.7, 2.0]), torch.tensor([1.5, 0.1]), torch.tensor([3.0, 2.0]),
                     torch.tensor([4.0, 1.0]))
    plain = dataclasses.replace(CONFIG, lambda_n=0.0, gamma=0.0)
    assert torch.equal(objective("split", scores, plain), objective("sft", scores, plain))
    # and with them, the hinge and the A_n term are there
    expected = 1.0 * scores.win + 0.5 * scores.lose + 5.0 * torch.relu(0.4 - (scores.lose - scores.win))
    torch.testing.assert_close(objective("split", scores, CONFIG), expected)


def test_reps_matches_its_formula():
    scores = _Scores(torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([2.0]))
    ref_win, ref_lose = torch.tensor([-6.0]), torch.tensor([-1.0])  # the reference prefers the losing answer
    weight = max(1.0 * (-1.0 - -6.0), 1.0) / 4.0
    inner = weight * (-0.5 * 4.0) - (-1.0 * 2.0) / 2.0
    expected = -torch.nn.functional.logsigmoid(torch.tensor([inner]))
    torch.testing.assert_close(objective("reps", scores, CONFIG, ref_win, ref_lose), expected)


@pytest.mark.parametrize("form", FORMS)
def test_reusing_the_lower_layers_gives_the_same_loss_and_gradient(model, tokenizer, form):
    batch = _trainer(model, tokenizer, form=form).schedule()[0]
    results = []
    for reuse in (True, False):
        trainer = _trainer(model, tokenizer, form=form, reuse_lower_layers=reuse)
        intervention = Intervention.random(model, form, LAYER, seed=1, gain=3.0).requires_grad_(True)
        loss = trainer.loss(intervention, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in intervention.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    for fast, slow in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(fast, slow, rtol=1e-3, atol=1e-5)


def test_each_pair_reads_its_own_multiplier_and_the_template_head_none(model, tokenizer, monkeypatch):
    seen = []
    original = Intervention.apply

    def spy(self, model, multiplier=1.0, dropout=0.0):
        seen.append(multiplier.detach().clone())
        return original(self, model, multiplier, dropout)

    monkeypatch.setattr(Intervention, "apply", spy)
    trainer = _trainer(model, tokenizer, form="vector")
    batch = trainer.schedule()[0]
    trainer.loss(Intervention.initial(model, "vector", LAYER), batch)
    (multipliers,) = seen
    row = trainer._batch([trainer.examples[i].pair for i, _, _ in batch], one_row=True)
    assert multipliers.shape == (1, row.input_ids.shape[1], 1), "the step's pairs share one row"
    head = template_head_length(tokenizer)
    assert head > 0 and row.position_ids[0, :head].tolist() == list(range(head))
    assert not multipliers[0, :head].any(), "the template's head is shared and left alone"
    sizes = [len(trainer.examples[i].pair.prompt) + len(trainer.examples[i].pair.positive)
             + len(trainer.examples[i].pair.negative) for i, _, _ in batch]
    owner = torch.searchsorted(torch.tensor(sizes).cumsum(0), row.source[0], right=True)
    expected = torch.tensor([s * m for _, s, m in batch])[owner] * row.steered[0]
    assert multipliers.view(-1).tolist() == expected.tolist(), "prompt rest, A_p and A_n read their pair's m"


@pytest.mark.parametrize("form", FORMS)
def test_a_step_in_one_row_equals_its_pairs_alone(model, tokenizer, form):
    trainer = _trainer(model, tokenizer, form=form)
    batch = trainer.schedule()[0]
    intervention = Intervention.random(model, form, LAYER, seed=1, gain=3.0)
    chosen = [trainer.examples[i] for i, _, _ in batch]
    signs = torch.tensor([float(s) for _, s, _ in batch])
    magnitudes = torch.tensor([float(m) for _, _, m in batch])
    together, _, _ = trainer._scores(intervention, chosen, signs, magnitudes, 0.0)
    for k in range(len(batch)):
        alone, _, _ = trainer._scores(intervention, chosen[k : k + 1], signs[k : k + 1], magnitudes[k : k + 1], 0.0)
        torch.testing.assert_close(together.win[k : k + 1], alone.win, rtol=0, atol=1e-5)
        torch.testing.assert_close(together.lose[k : k + 1], alone.lose, rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_only_the_intervention_learns_and_the_loss_falls(model, tokenizer, form):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, tokenizer, method="sft", form=form, config=dataclasses.replace(CONFIG, epochs=6))
    trained = trainer.train(progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the base model must stay frozen"
    assert trained.parameter_count() > 0 and any(p.abs().sum() > 0 for p in trained.parameters())
    assert sum(trainer.history[-3:]) < sum(trainer.history[:3])


def test_the_same_seed_gives_identical_weights(model, tokenizer):
    config = dataclasses.replace(CONFIG, dropout=0.1)
    first = _trainer(model, tokenizer, config=config, seed=3).train(progress=False)
    second = _trainer(model, tokenizer, config=config, seed=3).train(progress=False)
    other = _trainer(model, tokenizer, config=config, seed=4).train(progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


@pytest.mark.parametrize("form", FORMS)
def test_a_saved_artifact_reloads_to_identical_logits(tmp_path, monkeypatch, tokenizer, form):
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path))
    model = tiny_model("llama", vocab_size=49152)
    trained = train_intervention(model, tokenizer, PAIRS, "split", form, LAYER, CONFIG, progress=False)
    (folder,) = [p for p in (tmp_path / "interventions").iterdir() if p.is_dir()]
    meta = Intervention.load(folder).provenance
    assert (meta["method"], meta["form"], meta["layer"]) == ("split", form, LAYER) and meta["config"]["gamma"] == 5.0
    assert (folder / "peft" / "adapter_model.safetensors").exists() == (form == "lora")
    tokens = torch.tensor([[5, 17, 300, 42]])
    again = train_intervention(model, tokenizer, PAIRS, "split", form, LAYER, CONFIG, progress=False)
    with torch.no_grad():
        with trained.apply(model, 1.5):
            first = model(tokens).logits
        with again.apply(model, 1.5):
            second = model(tokens).logits
    assert torch.equal(first, second)
    assert len([p for p in (tmp_path / "interventions").iterdir() if p.is_dir()]) == 1, "served from the cache"


def test_a_nan_loss_stops_training_and_leaves_no_artifact(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("SPLITLIB_CACHE", str(tmp_path))
    model = tiny_model("llama", vocab_size=49152)
    monkeypatch.setattr(train_module, "objective", lambda *a, **k: torch.tensor([float("nan")], requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at step 0"):
        train_intervention(model, tokenizer, PAIRS, "sft", "vector", LAYER, CONFIG, progress=False)
    assert not [p for p in (tmp_path / "interventions").iterdir() if p.is_dir()]


@pytest.mark.parametrize(
    ("method", "form", "message"),
    [
        ("dpo", "vector", "unknown method 'dpo'"),
        ("split", "prefix", "unknown form 'prefix'"),
        ("diffmean", "lora", "diffmean does not apply to the lora form"),
    ],
)
def test_bad_method_or_form(tokenizer, method, form, message):
    model = tiny_model("llama", vocab_size=49152)
    with pytest.raises(ValueError, match=message):
        train_intervention(model, tokenizer, PAIRS, method, form, LAYER, CONFIG, cache=False)


def test_an_empty_training_set(tokenizer):
    model = tiny_model("llama", vocab_size=49152)
    with pytest.raises(ValueError, match="the training set is empty"):
        train_intervention(model, tokenizer, [], "split", "vector", LAYER, CONFIG, cache=False)


def test_diffmean_through_the_same_entry(tokenizer):
    model = tiny_model("llama", vocab_size=49152)
    vector = train_intervention(model, tokenizer, PAIRS, "diffmean", "vector", LAYER, cache=False)
    assert vector.form == "vector" and float(vector.delta_b.norm()) > 0


def test_config_for_derives_the_baselines_from_split():
    from splitlib.profiles import get_profile

    profile = get_profile("cpu")
    sft = config_for(profile, "psychopathy", "sft", "lora")
    assert (sft.lambda_n, sft.gamma) == (0.0, 0.0)
    assert config_for(profile, "psychopathy", "reps", "local_weight").pair_types == ("add", "sub")
    assert config_for(profile, "psychopathy", "split", "lora") == profile.split_configs[("psychopathy", "lora")]


def test_evaluation_sweeps_share_one_cached_sweep_per_split_for_both_sides(cache_dir, tokenizer):
    from splitlib.profiles import get_profile
    from splitlib.train import evaluation_grid, evaluation_sweeps

    model = tiny_model("llama", vocab_size=49152)
    profile = dataclasses.replace(get_profile("cpu"), layer=LAYER, vector_grid=(-2.0, -1.0, 0.0, 1.0, 2.0))
    trained = {("sft", "vector"): Intervention.random(model, "vector", LAYER, seed=3, gain=4.0)}
    splits = {"train": PAIRS[:3], "test": PAIRS[3:]}
    both = evaluation_sweeps(model, tokenizer, splits, trained, profile, unit=1.0, progress=False)
    assert sorted(both.m.unique()) == evaluation_grid(profile, "sft", "vector", trained[("sft", "vector")], 1.0)
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == len(splits)
    positive = evaluation_sweeps(model, tokenizer, splits, trained, profile, unit=1.0, negative=False, progress=False)
    assert len(list((cache_dir / "sweeps").glob("*.parquet"))) == len(splits), "served from the same sweeps"
    pd.testing.assert_frame_equal(positive, both[both.m >= 0].reset_index(drop=True))


@pytest.mark.parametrize("task", TASKS)
def test_the_cpu_profile_trains_the_pair_types_of_the_reference_config(task):
    from splitlib.profiles import get_profile

    cpu, gemma = get_profile("cpu"), get_profile("gemma-2-9b-it")
    for form in ("vector", "lora", "local_weight"):
        assert config_for(cpu, task, "split", form).pair_types == config_for(gemma, task, "split", form).pair_types
