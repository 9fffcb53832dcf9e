"""The manifold measures: they see moves off a known manifold and not along it; captured
activations equal a plain forward; bad input is refused; results are deterministic and cached."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model

from splitlib import FORMS, Intervention, geometry
from splitlib import sweep as sweep_module
from splitlib.engine import encode_pairs, kept_positions
from splitlib.fit import fit_tanh, fit_utility
from splitlib.sweep import run_sweep

LAYER = 2


# ----- a synthetic manifold: a 2-D plane in 12-D, with tiny noise off it ----------------------------------
WIDTH = 12


def _plane(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(WIDTH, WIDTH)))
    return basis[:, :2], basis[:, 2:]  # along the plane, across it


def _cloud(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    along, across = _plane()
    z = rng.uniform(-3, 3, size=(n, 2))
    x = z @ along.T + 0.01 * rng.normal(size=(n, WIDTH - 2)) @ across.T
    return x, (z[:, 0] > 0).astype(int)  # the "preference" is which half of the plane


@pytest.fixture(scope="module")
def reference() -> geometry.ManifoldReference:
    x, labels = _cloud()
    return geometry.fit_reference(x, labels, variance=0.99, n_neighbours=5)


def _moved(direction: np.ndarray, steps: np.ndarray, seed: int = 1) -> list[pd.DataFrame]:
    """Measures of 50 on-manifold points (inside the cloud) moved by each step along `direction`."""
    along, _ = _plane()
    start = np.random.default_rng(seed).uniform(-1, 1, size=(50, 2)) @ along.T
    return [start + t * direction for t in steps]


def test_the_pca_keeps_the_planes_dimension(reference):
    assert reference.n_components == 2
    assert reference.explained_variance > 0.99


@pytest.mark.parametrize("measure", geometry.DISTANCES)
def test_distances_grow_off_the_manifold_and_stay_flat_along_it(reference, measure):
    along, across = _plane()
    steps = np.array([0.0, 0.25, 0.5, 1.0, 1.5, 2.0])
    off = [reference.measure(x)[measure].mean() for x in _moved(across[:, 3], steps)]
    on = [reference.measure(x)[measure].mean() for x in _moved(along[:, 0], steps)]
    assert np.all(np.diff(off) > 0), f"{measure} must grow with the distance pushed off the manifold: {off}"
    typical = reference.measure(_cloud(300, seed=7)[0])[measure]  # fresh on-manifold points
    assert max(on) <= np.quantile(typical, 0.99), f"{measure} moved along the manifold: {on}"
    assert off[-1] > 10 * max(on)


def test_projections_read_the_preference_axis(reference):
    along, across = _plane()
    assert abs(reference.diffmean_direction @ along[:, 0]) > 0.99  # the labels split the plane along z1
    assert abs(reference.probe_direction @ along[:, 0]) > 0.9
    steps = np.array([0.0, 1.0, 2.0])
    gain = [reference.measure(x).proj_diffmean.mean() for x in _moved(reference.diffmean_direction, steps)]
    np.testing.assert_allclose(np.diff(gain), 1.0, atol=1e-9)  # a unit direction: the gain is the step
    sideways = [reference.measure(x).proj_diffmean.mean() for x in _moved(across[:, 0], steps)]
    np.testing.assert_allclose(np.diff(sideways), 0.0, atol=0.02)
    assert reference.probe_accuracy > 0.95


def test_the_same_inputs_give_the_same_numbers():
    x, labels = _cloud(400)
    first, second = (geometry.fit_reference(x, labels, n_neighbours=5, seed=3) for _ in range(2))
    probe = _cloud(60, seed=5)[0] + 0.3
    pd.testing.assert_frame_equal(first.measure(probe), second.measure(probe))
    assert first.digest == second.digest


# ----- bad input -------------------------------------------------------------------------------------------
def test_bad_reference_input():
    x, labels = _cloud(40)
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 40 rows.*row 7"):
        bad = x.copy()
        bad[7, 3] = np.nan
        geometry.fit_reference(bad, labels)
    with pytest.raises(ValueError, match="k = 41 nearest neighbours.*there are 40"):
        geometry.fit_reference(x, labels, n_neighbours=41)
    with pytest.raises(ValueError, match="k = 50 principal components.*40 samples"):
        geometry.fit_reference(x, labels, variance=50)
    with pytest.raises(ValueError, match="variance must be"):
        geometry.fit_reference(x, labels, variance=1.5)
    with pytest.raises(ValueError, match="both present"):
        geometry.fit_reference(x, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match=r"got shape \(40,\) and values \[0, 1, 2\]"):
        geometry.fit_reference(x, np.arange(40) % 3)
    with pytest.raises(ValueError, match="2-D"):
        geometry.fit_reference(x[0], labels)


def test_bad_measurement_input(reference):
    with pytest.raises(ValueError, match=f"width 13 but the reference was fitted on width {WIDTH}"):
        reference.measure(np.zeros((3, WIDTH + 1)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        reference.measure(np.full((3, WIDTH), np.inf))


def _activations(multipliers, n_pairs: int = 6, seed: int = 0) -> geometry.Activations:
    """Synthetic captured activations: on the plane at m = 0, moved off it in proportion to |m|."""
    along, across = _plane()
    rng = np.random.default_rng(seed)
    base = rng.uniform(-1, 1, size=(2 * n_pairs, 2)) @ along.T
    values = np.stack([[base + abs(m) * across[:, 0] * (1 + 0.1 * rng.normal())] for m in multipliers])
    return geometry.Activations(values.astype(np.float32), np.asarray(multipliers, dtype=float), (1,),
                                tuple(f"p{i}" for i in range(n_pairs)), np.repeat(np.arange(n_pairs), 2),
                                np.tile([1, 0], n_pairs), np.zeros(2 * n_pairs, dtype=int))


def test_a_grid_without_the_unsteered_point_is_refused(reference):
    with pytest.raises(ValueError, match=r"no unsteered point \(m = 0\)"):
        geometry.measure_activations(_activations([-1.0, 1.0, 2.0]), {1: reference})
    with pytest.raises(ValueError, match="no reference for hidden states \\[1\\]"):
        geometry.measure_activations(_activations([0.0, 1.0]), {5: reference})


def test_nan_activations_are_refused_with_where_they_are(reference):
    activations = _activations([0.0, 1.0, 2.0])
    activations.values[2, 0, 4, 1] = np.nan
    with pytest.raises(ValueError, match="hidden state 1, m = 2 contain NaN"):
        geometry.measure_activations(activations, {1: reference})


# ----- relative curves and rank correlations ----------------------------------------------------------------
GRID = [-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


def _utility_sweep(pair_ids, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"pair_id": p, "m": m, "util_odds": 2.0 - 1.5 * abs(m) + 0.05 * rng.normal()}
            for p in pair_ids for m in GRID]
    return pd.DataFrame(rows)


def test_relative_curves_start_at_one_and_zero(reference):
    table = geometry.per_pair(geometry.measure_activations(_activations(GRID), {1: reference}))
    curves = geometry.relative_curves(table)
    at_zero = curves[curves.m == 0]
    np.testing.assert_allclose(at_zero[list(geometry.DISTANCES)], 1.0)
    np.testing.assert_allclose(at_zero[list(geometry.PROJECTIONS)], 0.0)
    assert curves[curves.m == 2].pca_residual.item() > 10


def test_distance_growing_as_utility_falls_correlates_negatively(reference):
    table = geometry.per_pair(geometry.measure_activations(_activations(GRID), {1: reference}))
    sweep = _utility_sweep(table.pair_id.unique())
    decay_fit = fit_utility(np.array(GRID), sweep.groupby("m").util_odds.mean().to_numpy())
    result = geometry.rank_correlations(table, sweep, decay_fit.validity, n_boot=200, seed=1)
    assert set(result.measure) == set(geometry.DISTANCES)
    assert (result.rho_util < -0.8).all() and (result.rho_decay < -0.8).all()
    assert (result.rho_util_low <= result.rho_util).all() and (result.rho_util <= result.rho_util_high + 1e-12).all()
    again = geometry.rank_correlations(table, sweep, decay_fit.validity, n_boot=200, seed=1)
    pd.testing.assert_frame_equal(result, again)


def test_correlations_need_matching_sweeps(reference):
    table = geometry.per_pair(geometry.measure_activations(_activations(GRID), {1: reference}))
    sweep = _utility_sweep(table.pair_id.unique())
    with pytest.raises(ValueError, match="lacks UtilOdds at m = \\[2.0\\]"):
        geometry.rank_correlations(table, sweep[sweep.m != 2.0], n_boot=10)


def test_the_fitted_validity_is_the_decay_alone():
    m = np.array(GRID)
    utility = fit_utility(m, 2.0 - 1.5 * np.abs(m))
    np.testing.assert_allclose(utility(m),
                               utility.params["beta_u"] * utility.validity(m) + utility.params["b_u"])
    with pytest.raises(ValueError, match="tanh fit has no decay"):
        fit_tanh(m, m).validity(m)


# ----- capture through the engine ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_captured_activations_equal_a_plain_forward(big_model, tokenizer, pairs, form):
    intervention = Intervention.random(big_model, form, LAYER, seed=1, gain=4.0)
    grid = [-2.0, 0.0, 1.5]
    states = (1, LAYER + 1, 4)  # below the intervention, its output, and the final norm
    captured = geometry.capture_activations(big_model, tokenizer, pairs, intervention, grid, states,
                                            tokens_per_answer=3, progress=False)
    encoded = encode_pairs(tokenizer, pairs)
    for k, m in enumerate(grid):
        for row, (p, answer, position) in enumerate(zip(captured.pair, captured.answer, captured.position)):
            sequence = encoded[p].prompt + (encoded[p].negative if answer == 0 else encoded[p].positive)
            # the update leaves the chat template's head alone, as the reference code does
            acts = (torch.arange(len(sequence)) >= encoded[p].unsteered).float().view(1, -1, 1)
            with torch.no_grad(), intervention.apply(big_model, m * acts):
                hidden = big_model(input_ids=torch.tensor([sequence]), output_hidden_states=True).hidden_states
            for j, state in enumerate(states):
                expected = hidden[state][0, len(encoded[p].prompt) + position].numpy()  # -1: the last prompt token
                np.testing.assert_allclose(captured.values[k, j, row], expected, rtol=1e-4, atol=1e-4)
    moved = np.abs(captured.at(1.5, LAYER + 1) - captured.at(0.0, LAYER + 1)).max()
    assert moved > 1e-2, "the intervention should move its own layer's output"
    np.testing.assert_array_equal(captured.at(1.5, 1), captured.at(0.0, 1))  # below it nothing moves


def test_capture_keeps_a_few_tokens_per_answer_and_is_deterministic(tokenizer, pairs):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=2, gain=4.0)
    first = geometry.capture_activations(model, tokenizer, pairs, intervention, [0.0, 1.0], (3, 4),
                                         tokens_per_answer=2, progress=False)
    second = geometry.capture_activations(model, tokenizer, pairs, intervention, [0.0, 1.0], (3, 4),
                                          tokens_per_answer=2, progress=False)
    np.testing.assert_array_equal(first.values, second.values)
    encoded = encode_pairs(tokenizer, pairs)
    # per pair: its last prompt token, then up to 2 of each answer's tokens that predict the next one
    expected = sum(1 + min(len(e.positive) - 1, 2) + min(len(e.negative) - 1, 2) for e in encoded)
    assert first.values.shape == (2, 2, expected, 32)
    assert len(encoded[0].positive) == len(encoded[0].negative) == 3  # "Yes" / "No", then the end of turn
    assert list(first.answer[:5]) == [-1, 1, 1, 0, 0] and list(first.position[:5]) == [-1, 0, 1, 0, 1]
    assert list(kept_positions(10, 4)) == [0, 3, 6, 9]
    assert list(kept_positions(2, 8)) == [0, 1]
    assert list(kept_positions(0, 8)) == []


def test_unsteered_capture_equals_m_zero(tokenizer, pairs):
    model = tiny_model("qwen2", vocab_size=49152)
    intervention = Intervention.random(model, "lora", LAYER, seed=3, gain=4.0)
    plain = geometry.capture_activations(model, tokenizer, pairs, None, (0.0,), (2, 3, 4), progress=False)
    steered = geometry.capture_activations(model, tokenizer, pairs, intervention, [0.0, 1.0], (2, 3, 4), progress=False)
    np.testing.assert_allclose(plain.values[0], steered.values[0], atol=1e-5)


def test_bad_capture_input(tokenizer, pairs):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=2)
    capture = lambda *args, **kwargs: geometry.capture_activations(model, tokenizer, *args, progress=False, **kwargs)  # noqa: E731
    with pytest.raises(ValueError, match="hidden state 0 is out of range.*1..4"):
        capture(pairs, intervention, [0.0], (0, 2))
    with pytest.raises(ValueError, match="only m = 0"):
        capture(pairs, None, [0.0, 1.0], (2,))
    with pytest.raises(ValueError, match="repeats a multiplier"):
        capture(pairs, intervention, [0.0, 1.0, 1.0], (2,))
    with pytest.raises(ValueError, match="at least one pair"):
        capture([], intervention, [0.0], (2,))
    with pytest.raises(ValueError, match="tokens_per_answer must be a positive int"):
        capture(pairs, intervention, [0.0], (2,), tokens_per_answer=0)
    wide = Intervention("vector", LAYER, delta_b=torch.ones(64))
    with pytest.raises(ValueError, match="does not fit"):
        capture(pairs, wide, [0.0], (2,))


def test_captures_and_measures_are_cached_without_going_stale(cache_dir, tokenizer, pairs, monkeypatch):
    model = tiny_model("llama", vocab_size=49152)
    intervention = Intervention.random(model, "vector", LAYER, seed=4, gain=4.0)
    states = (3, 4)
    cloud = geometry.capture_activations(model, tokenizer, pairs, None, (0.0,), states, cache=True, progress=False)
    again = geometry.capture_activations(model, tokenizer, pairs, None, (0.0,), states, cache=True, progress=False)
    np.testing.assert_array_equal(cloud.values, again.values)
    assert again.pair_ids == cloud.pair_ids and (again.answer == cloud.answer).all()
    references = geometry.fit_references(cloud, n_neighbours=3, variance=2)
    grid = [-1.0, 0.0, 1.0]
    cached = geometry.steering_measures(model, tokenizer, pairs, intervention, grid, references, progress=False)
    fresh = geometry.steering_measures(model, tokenizer, pairs, intervention, grid, references, cache=False,
                                       progress=False)
    pd.testing.assert_frame_equal(cached, fresh)
    monkeypatch.setattr(geometry, "_capture_pass", lambda *a, **k: pytest.fail("recomputed a cached result"))
    pd.testing.assert_frame_equal(
        geometry.steering_measures(model, tokenizer, pairs, intervention, grid, references, progress=False), cached)
    # the sweep of the same pass is stored where run_sweep finds it, equal to a sweep of its own
    monkeypatch.setattr(sweep_module, "sweep_pass", lambda *a, **k: pytest.fail("the measures' sweep was not stored"))
    stored = run_sweep(model, tokenizer, pairs, intervention, grid, loss="sum", progress=False)
    monkeypatch.undo()
    own = run_sweep(model, tokenizer, pairs, intervention, grid, loss="sum", cache=False, progress=False)
    pd.testing.assert_frame_equal(stored, own, check_exact=False, rtol=0, atol=1e-5)
    monkeypatch.setattr(geometry, "_capture_pass", lambda *a, **k: pytest.fail("recomputed a cached result"))
    other = geometry.fit_references(cloud, n_neighbours=2, variance=2)  # another reference: not served the old table
    with pytest.raises(pytest.fail.Exception):
        geometry.steering_measures(model, tokenizer, pairs, intervention, grid, other, progress=False)
    assert len(list((cache_dir / "activations").glob("*.npz"))) == 1


def test_reading_the_curves():
    rows = []
    for m in GRID:
        rows.append({"method": "a", "form": "vector", "hidden_state": 1, "m": m, "pca_residual": 1 + abs(m),
                     "knn_distance": 1 + m * m, "mahalanobis": 1 + 2 * abs(m), "util_drop": -abs(m)})
        rows.append({"method": "b", "form": "vector", "hidden_state": 1, "m": m, "pca_residual": 1 + abs(m),
                     "knn_distance": 1 + abs(m) * (m != 2.0), "mahalanobis": 1 + abs(m) / 10, "util_drop": m})
    curves = pd.DataFrame(rows)
    away = geometry.moving_away(curves)
    assert len(away) == 2 * 2 * 3 and away.sum() == 11  # only b's knn distance comes back, at m = 2
    assert not away[("b", "vector", 1, "m >= 0", "knn_distance")]
    reads = geometry.utility_at_distance(curves, "mahalanobis", 3.0)  # a reaches 3 at |m| = 1; b never does
    assert reads.to_dict() == {("a", "vector", "m >= 0"): -1.0, ("a", "vector", "m <= 0"): -1.0}
    with pytest.raises(ValueError, match="unknown distance"):
        geometry.utility_at_distance(curves, "proj_probe", 3.0)
