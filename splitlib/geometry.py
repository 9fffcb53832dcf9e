"""The activation manifold, measured: captured hidden states and how far steering moves them.

The paper explains the utility loss by steering pushing activations off a "valid-generation
manifold" but measures no distance. This module captures hidden states through the sweep
engine's layer window (layers below the intervention run once per batch), fits a reference on
unsteered activations (PCA subspace, nearest neighbours, a Ledoit-Wolf covariance, and two
preference directions) and measures steered activations against it. Hidden states are numbered
as transformers numbers `output_hidden_states`: index i is the output of decoder layer i - 1, and
the last index is the final norm's output, what the LM head reads.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

from .cache import cache_root, cached_artifact
from .checks import check_int, check_multipliers, check_positive_int, check_type
from .data import PolarityPair, check_pairs
from .engine import artifact_key, encode_pairs, hidden_state_module, resolved
from .interventions import Intervention, check_intervention
from .models import check_layer, decoder_layers
from .profiles import EngineSettings
from .scoring import Tokenizer
from .sweep import Capture, SweepResult, store_sweep, sweep_key, sweep_pass, write_table

if TYPE_CHECKING:
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

CAPTURE_CODE = ("geometry", "sweep")  # the modules whose source keys a capture (beside the engine's own)
DISTANCES = ("pca_residual", "knn_distance", "mahalanobis")
PROJECTIONS = ("proj_diffmean", "proj_probe")
MEASURES = DISTANCES + PROJECTIONS
MEASURE_LABELS = {
    "pca_residual": "PCA residual norm",
    "knn_distance": "mean kNN distance",
    "mahalanobis": "Mahalanobis (Ledoit-Wolf)",
    "proj_diffmean": "projection on DiffMean direction",
    "proj_probe": "projection on probe direction",
}


# ----- capture -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Activations:
    """Hidden states at the positions whose read-out the two losses score, unsteered or at each
    m of a grid: each pair's last prompt token (it predicts the first answer token) and a
    subsample of the answer tokens that predict the next answer token.

    `values[i, j]` holds, for multiplier `multipliers[i]` and hidden state `hidden_states[j]`, one
    row per kept position; `pair` (index into `pair_ids`), `answer` (1 for A_p, 0 for A_n, -1 for
    the prompt token the two answers share) and `position` (index within the answer, -1 for the
    prompt token) say where each row came from.
    """

    values: np.ndarray  # (n_multipliers, n_hidden_states, n_positions, width), float32
    multipliers: np.ndarray
    hidden_states: tuple[int, ...]
    pair_ids: tuple[str, ...]
    pair: np.ndarray
    answer: np.ndarray
    position: np.ndarray

    def at(self, m: float, hidden_state: int) -> np.ndarray:
        """The (n_positions, width) activations at multiplier `m` and hidden state `hidden_state`."""
        rows = np.flatnonzero(np.isclose(self.multipliers, m, rtol=0, atol=1e-12))
        if rows.size == 0:
            raise KeyError(f"m = {m} is not in the captured grid {self.multipliers.tolist()}")
        if hidden_state not in self.hidden_states:
            raise KeyError(f"hidden state {hidden_state} was not captured (captured: {list(self.hidden_states)})")
        return self.values[rows[0], self.hidden_states.index(hidden_state)]

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


def default_hidden_states(model: nn.Module, layer: int, above: int = 4) -> tuple[int, ...]:
    """The intervention layer's output, the output `above` layers higher, and the final state."""
    check_layer(model, layer)
    check_int("above", above, low=0)
    n_layers = len(decoder_layers(model))
    return tuple(sorted({layer + 1, min(layer + 1 + above, n_layers), n_layers}))


def _check_capture(model: nn.Module, pairs: Sequence[PolarityPair], intervention: Intervention | None,
                   multipliers: Sequence[float], hidden_states: Sequence[int]) -> list[float]:
    check_pairs(pairs, "capture")
    grid = check_multipliers(multipliers, intervention, what="capture")
    check_intervention(model, intervention)
    if not hidden_states:
        raise ValueError("capture needs at least one hidden state")
    for i in hidden_states:
        hidden_state_module(model, int(i))  # a ValueError naming the valid range
    return grid


def _activations(result: SweepResult, hidden_states: tuple[int, ...]) -> Activations:
    """A sweep pass's captured hidden states, per pair: the prompt token, then A_p's, then A_n's."""
    assert result.hidden is not None and result.where is not None  # a pass with a capture
    pair, answer, position = (np.asarray(column) for column in zip(*result.where))
    kind = np.select([answer == -1, answer == 1], [0, 1], 2)
    order = np.lexsort((position, kind, pair))
    return Activations(result.hidden[:, :, order], np.asarray(result.multipliers, dtype=float), hidden_states,
                       tuple(p.id for p in result.pairs), pair[order], answer[order], position[order])


def _capture_pass(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair],
                  intervention: Intervention | None, grid: list[float], hidden_states: tuple[int, ...],
                  options: CaptureOptions) -> tuple[SweepResult, Activations]:
    """One engine pass over the grid: the sweep's losses and the activations."""
    encoded = encode_pairs(tokenizer, pairs, options.max_answer_tokens)
    result = sweep_pass(model, tokenizer, pairs, intervention, grid, encoded=encoded, settings=options.settings,
                        capture=Capture(hidden_states, options.tokens_per_answer), progress=options.progress,
                        label="capture")
    return result, _activations(result, hidden_states)


@dataclass(frozen=True)
class CaptureOptions:
    """How a capture reads the pairs and batches its work."""

    tokens_per_answer: int = 8
    max_answer_tokens: int | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive_int("CaptureOptions.tokens_per_answer", self.tokens_per_answer)
        check_positive_int("CaptureOptions.max_answer_tokens", self.max_answer_tokens, optional=True)
        check_type("CaptureOptions.settings", self.settings, EngineSettings)

    def key_inputs(self, model: nn.Module) -> dict[str, object]:
        return {"tokens_per_answer": self.tokens_per_answer, "max_answer_tokens": self.max_answer_tokens,
                "settings": resolved(self.settings, model)}


def capture_activations(
    model: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[PolarityPair],
    intervention: Intervention | None,
    multipliers: Sequence[float] = (0.0,),
    hidden_states: Sequence[int] = (),
    *,
    cache: bool = False,
    **fields: Any,
) -> Activations:
    """Hidden states at each pair's last prompt token and at up to `options.tokens_per_answer`
    evenly spaced answer tokens that predict a scored token (see `Activations`), at every
    multiplier, from the engine's own pass (the layers below the intervention run once per batch).

    With `cache`, the result is stored under a key of everything that determines it (use it for
    small captures such as a reference cloud; a full steered grid is large). `fields` are those
    of `CaptureOptions`."""
    options = CaptureOptions(**fields)
    hidden_states = tuple(sorted(int(i) for i in hidden_states))
    grid = _check_capture(model, pairs, intervention, multipliers, hidden_states)
    if not cache:
        return _capture_pass(model, tokenizer, pairs, intervention, grid, hidden_states, options)[1]
    key = artifact_key(CAPTURE_CODE, model, pairs, intervention, multipliers=grid, hidden_states=hidden_states,
                       **options.key_inputs(model))

    def write(path: Path) -> None:
        result = _capture_pass(model, tokenizer, pairs, intervention, grid, hidden_states, options)[1]
        with open(path, "wb") as handle:
            np.savez(handle, values=result.values, multipliers=result.multipliers,
                     hidden_states=np.asarray(result.hidden_states), pair_ids=np.asarray(result.pair_ids),
                     pair=result.pair, answer=result.answer, position=result.position)

    with np.load(cached_artifact(cache_root() / "activations" / f"{key}.npz", write, made_by="capture")) as stored:
        return Activations(stored["values"], stored["multipliers"], tuple(int(i) for i in stored["hidden_states"]),
                           tuple(str(p) for p in stored["pair_ids"]), stored["pair"], stored["answer"],
                           stored["position"])


# ----- the reference: what "on the manifold" means -------------------------------------------------------
def check_activations(x: np.ndarray, width: int | None = None, where: str = "activations") -> np.ndarray:
    """A finite (n, width) float array, or a clear error that says what is wrong."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{where} must be a 2-D (samples, width) array, got shape {x.shape}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{where} have width {x.shape[1]} but the reference was fitted on width {width} "
                         "(activations of another model or layer?)")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{where} contain NaN or infinite values in {int(bad.sum())} of {len(x)} rows "
                         f"(first: row {int(np.flatnonzero(bad)[0])})")
    return x


@dataclass
class ManifoldReference:
    """Estimators fitted on unsteered activations, and the measures they give for any others."""

    width: int
    n_samples: int
    pca: PCA  # k chosen by explained variance
    neighbours: NearestNeighbors
    covariance: LedoitWolf
    diffmean_direction: np.ndarray  # unit mean(A_p) - mean(A_n)
    probe_direction: np.ndarray  # unit logistic-probe weights, pointing towards A_p
    probe_accuracy: float  # on the fitting data
    variance: float
    digest: str = field(default="", repr=False)
    flag: str = ""  # empty for a trustworthy reference, else why a measure means little

    @property
    def ok(self) -> bool:
        return not self.flag

    @property
    def n_components(self) -> int:
        return int(self.pca.n_components_)

    @property
    def explained_variance(self) -> float:
        return float(self.pca.explained_variance_ratio_.sum())

    @property
    def n_neighbours(self) -> int:
        return int(self.neighbours.n_neighbors)

    def measure(self, x: np.ndarray, where: str = "activations") -> pd.DataFrame:
        """Every measure for every row of `x`: three distances from the unsteered cloud and the
        projections (from the cloud's mean) on the two preference directions. `where` names `x`
        in errors."""
        x = check_activations(x, self.width, where)
        reconstructed = self.pca.inverse_transform(self.pca.transform(x))
        centred = x - self.covariance.location_
        return pd.DataFrame({
            "pca_residual": np.linalg.norm(x - reconstructed, axis=1),
            "knn_distance": self.neighbours.kneighbors(x)[0].mean(axis=1),
            "mahalanobis": np.sqrt(self.covariance.mahalanobis(x)),
            "proj_diffmean": centred @ self.diffmean_direction,
            "proj_probe": centred @ self.probe_direction,
        })


def fit_reference(x: np.ndarray, labels: np.ndarray, *, variance: float | int = 0.9, n_neighbours: int = 10,
                  seed: int = 0) -> ManifoldReference:
    """Fit the reference on unsteered activations `x` (rows). `labels` are 1 for A_p's tokens and
    0 for A_n's, which the preference directions are fitted on, and -1 for rows that only join
    the cloud (the prompt token both answers share).

    `variance` in (0, 1) keeps the fewest principal components that explain that share of the
    variance; an integer keeps that many.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestNeighbors

    x = check_activations(x, where="reference activations")
    labels = np.asarray(labels)
    n, width = x.shape
    values = set(np.unique(labels).tolist())
    if labels.shape != (n,) or not {0, 1} <= values <= {-1, 0, 1}:
        raise ValueError(f"labels must be {n} values of 1, 0 (both present) or -1, got shape {labels.shape} "
                         f"and values {sorted(values)}")
    if not 1 <= n_neighbours <= n:
        raise ValueError(f"k = {n_neighbours} nearest neighbours needs at least k reference samples; there are {n}")
    if isinstance(variance, (int, np.integer)) and not isinstance(variance, bool):
        if not 1 <= variance <= min(n, width):
            raise ValueError(f"k = {variance} principal components needs at least k samples and width k; "
                             f"there are {n} samples of width {width}")
    elif not 0 < float(variance) < 1:
        raise ValueError(f"variance must be a share in (0, 1) or a number of components, got {variance}")
    _check_spread(x)
    pca = PCA(n_components=variance, svd_solver="full", random_state=seed).fit(x)
    neighbours = NearestNeighbors(n_neighbors=n_neighbours).fit(x)
    covariance = LedoitWolf().fit(x)
    flag = _covariance_flag(covariance, width)
    if flag:
        warnings.warn(f"fit_reference: {flag}", RuntimeWarning, stacklevel=2)
    diffmean = x[labels == 1].mean(axis=0) - x[labels == 0].mean(axis=0)
    labelled = labels >= 0
    # Fitted in the activations' own coordinates: standardising first would let the L2 penalty
    # favour near-constant coordinates, turning the direction towards where the cloud has no spread.
    answers, answer_labels = x[labelled] - covariance.location_, labels[labelled]
    probe = LogisticRegression(max_iter=5000, random_state=seed).fit(answers, answer_labels)
    weights = probe.coef_[0]
    digest = hashlib.sha256(x.tobytes() + labels.astype(np.int8).tobytes()
                            + repr((variance, n_neighbours, seed)).encode())
    return ManifoldReference(
        width=width, n_samples=n, pca=pca, neighbours=neighbours, covariance=covariance,
        diffmean_direction=_unit(diffmean, "the DiffMean direction (mean of the A_p rows minus mean of the A_n rows)"),
        probe_direction=_unit(weights, "the probe direction (logistic-regression weights)"),
        probe_accuracy=float(probe.score(answers, answer_labels)), variance=float(variance),
        digest=digest.hexdigest()[:16], flag=flag,
    )


def _check_spread(x: np.ndarray) -> None:
    """A ValueError for activations with nothing to fit: every row the same vector."""
    if np.ptp(x, axis=0).max() <= 1e-12 * max(1.0, float(np.abs(x).max())):
        raise ValueError(f"the reference activations are constant: all {len(x)} rows are the same vector, so "
                         "there is no cloud to fit (a degenerate capture, or the wrong hidden state?)")


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    """`vector` scaled to unit length, or a ValueError where it has none (no direction to project on)."""
    norm = float(np.linalg.norm(vector))
    if not 0 < norm < np.inf:
        raise ValueError(f"{what} has norm {norm}: the reference activations do not separate A_p from A_n")
    return vector / norm


def _covariance_flag(covariance: LedoitWolf, width: int) -> str:
    """'' if the Ledoit-Wolf covariance is safely invertible, else why Mahalanobis distances mean little.
    Its eigenvalues lie in [s*mu, ((1-s)*width + s)*mu] (s the shrinkage), so the decomposition is
    needed only when the shrinkage is tiny."""
    shrinkage = float(covariance.shrinkage_)
    if shrinkage > 0 and ((1 - shrinkage) * width + shrinkage) / shrinkage < 1e12:
        return ""
    eigenvalues = np.linalg.eigvalsh(covariance.covariance_)
    if eigenvalues[-1] > 0 and eigenvalues[0] > 1e-12 * eigenvalues[-1]:
        return ""
    return (f"the Ledoit-Wolf covariance is singular (shrinkage {shrinkage:.2g}, eigenvalues {eigenvalues[0]:.3g} "
            f"to {eigenvalues[-1]:.3g}): Mahalanobis distances ignore every direction without variance")


def fit_references(activations: Activations, **options: Any) -> dict[int, ManifoldReference]:
    """One reference per captured hidden state, from unsteered activations (m = 0)."""
    return {i: fit_reference(activations.at(0.0, i), activations.answer, **options) for i in activations.hidden_states}


# ----- steered activations against the reference ---------------------------------------------------------
def measure_activations(activations: Activations, references: dict[int, ManifoldReference]) -> pd.DataFrame:
    """One row per (hidden state, m, token) with every measure; the grid must contain m = 0, the
    point every distance and projection gain is read against."""
    if not np.any(activations.multipliers == 0):
        raise ValueError(f"the grid {activations.multipliers.tolist()} has no unsteered point (m = 0); "
                         "distances and projection gains are read against it")
    missing = [i for i in activations.hidden_states if i not in references]
    if missing:
        raise ValueError(f"no reference for hidden states {missing} (references: {sorted(references)})")
    frames = []
    for i in activations.hidden_states:
        for m in activations.multipliers:
            frame = references[i].measure(activations.at(m, i), f"activations at hidden state {i}, m = {m:g}")
            frames.append(frame.assign(hidden_state=i, m=float(m),
                                       pair_id=np.asarray(activations.pair_ids)[activations.pair],
                                       answer=activations.answer, position=activations.position))
    columns = ["hidden_state", "m", "pair_id", "answer", "position", *MEASURES]
    return pd.concat(frames, ignore_index=True)[columns]


def steering_measures(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], intervention: Intervention,
                      multipliers: Sequence[float], references: dict[int, ManifoldReference], *,
                      cache: bool = True, **fields: Any) -> pd.DataFrame:
    """Capture steered activations over a grid and measure them (`measure_activations`).

    The losses of the same pass are stored where `run_sweep` finds them, so a chapter that needs
    both pays for one pass. The activations
    themselves are dropped once measured (a steered grid is large); the measures are cached as
    parquet under a key that includes the references' fitting data. `fields` are those of
    `CaptureOptions`."""
    options = CaptureOptions(**fields)
    hidden_states = tuple(sorted(references))
    grid = _check_capture(model, pairs, intervention, multipliers, hidden_states)

    def measure(path: Path | None) -> pd.DataFrame:
        result, captured = _capture_pass(model, tokenizer, pairs, intervention, grid, hidden_states, options)
        measured = measure_activations(captured, references)
        if path is not None:
            encoded = encode_pairs(tokenizer, pairs, options.max_answer_tokens)
            store_sweep(sweep_key(model, pairs, encoded, intervention, grid, options.settings), result, model,
                        intervention)
            write_table(measured, path, model, pairs, intervention, multipliers=grid,
                        hidden_states=list(hidden_states))
        return measured

    if not cache:
        return measure(None)
    key = artifact_key(CAPTURE_CODE, model, pairs, intervention, multipliers=grid, hidden_states=hidden_states,
                       references={str(i): r.digest for i, r in sorted(references.items())},
                       **options.key_inputs(model))
    return pd.read_parquet(cached_artifact(cache_root() / "manifold" / f"{key}.parquet", measure, made_by="measures"))


def per_pair(measures: pd.DataFrame) -> pd.DataFrame:
    """Measures averaged over each pair's kept tokens (both answers): the unit the bootstrap resamples."""
    return measures.groupby(["hidden_state", "m", "pair_id"], sort=True)[list(MEASURES)].mean().reset_index()


def relative_curves(pairs_table: pd.DataFrame) -> pd.DataFrame:
    """Mean over pairs per (hidden state, m): distances as a ratio to their value at m = 0 and
    projections as a gain over m = 0 (the paper's "projection gain")."""
    means = pairs_table.groupby(["hidden_state", "m"], sort=True)[list(MEASURES)].mean().reset_index()
    if not (means.m == 0).any():
        raise ValueError("the table has no unsteered point (m = 0) to read distances against")
    at_zero = means[means.m == 0].set_index("hidden_state")
    for column in DISTANCES:
        means[column] = means[column] / means.hidden_state.map(at_zero[column])
    for column in PROJECTIONS:
        means[column] = means[column] - means.hidden_state.map(at_zero[column])
    return means


# ----- rank correlations with utility ---------------------------------------------------------------------
def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between the rows of `a` and of `b` (one curve per row); NaN for a flat curve."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(axis=-1, keepdims=True), rb - rb.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((ra ** 2).sum(axis=-1) * (rb ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=-1) / np.where(denominator > 0, denominator, 1), np.nan)


def rank_correlations(pairs_table: pd.DataFrame, sweep: pd.DataFrame,
                      decay: Callable[[np.ndarray], np.ndarray] | None = None, *,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Spearman's rho over the m grid between each mean distance curve and the mean UtilOdds
    curve (and the fitted decay D_u(m), if given as a callable of m), with percentile intervals
    from resampling the pairs (the same resample for both curves).

    `pairs_table` is `per_pair` output; `sweep` has pair_id, m and util_odds for the same pairs and m.
    """
    util = sweep.pivot_table(index="pair_id", columns="m", values="util_odds", aggfunc="first")
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    rows = []
    for hidden_state, group in pairs_table.groupby("hidden_state", sort=True):
        first = group.pivot_table(index="pair_id", columns="m", values=DISTANCES[0], aggfunc="first")
        grid, pair_ids = first.columns.to_numpy(dtype=float), first.index
        if len(grid) < 3:
            raise ValueError(f"a rank correlation over m needs at least 3 multipliers, got {grid.tolist()}")
        missing_m = [float(m) for m in grid if not np.isclose(util.columns.to_numpy(dtype=float), m).any()]
        missing_pairs = sorted(set(pair_ids) - set(util.index))
        if missing_m:
            raise ValueError(f"the sweep lacks UtilOdds at m = {missing_m[:5]} (hidden state {hidden_state})")
        if missing_pairs:
            raise ValueError(f"the sweep lacks UtilOdds for pairs {missing_pairs[:5]}")
        util_columns = [util.columns[np.isclose(util.columns.to_numpy(dtype=float), m)][0] for m in grid]
        util_values = util.loc[pair_ids, util_columns]
        util_values = util_values.to_numpy(dtype=float)
        draws = rng.integers(0, len(pair_ids), size=(n_boot, len(pair_ids)))
        decay_curve = np.asarray(decay(grid), dtype=float) if decay is not None else None
        for measure in DISTANCES:
            values = group.pivot_table(index="pair_id", columns="m", values=measure, aggfunc="first")
            values = values.loc[pair_ids].to_numpy(dtype=float)
            row = {"hidden_state": hidden_state, "measure": measure}
            boot_distance = values[draws].mean(axis=1)
            row["rho_util"] = float(_spearman_rows(values.mean(axis=0), util_values.mean(axis=0)))
            boot = _spearman_rows(boot_distance, util_values[draws].mean(axis=1))
            row["rho_util_low"], row["rho_util_high"] = np.nanquantile(boot, [tail, 1 - tail])
            row["rho_decay"] = row["rho_decay_low"] = row["rho_decay_high"] = np.nan  # no fitted decay
            if decay_curve is not None:
                row["rho_decay"] = float(_spearman_rows(values.mean(axis=0), decay_curve))
                boot = _spearman_rows(boot_distance, np.broadcast_to(decay_curve, boot_distance.shape))
                row["rho_decay_low"], row["rho_decay_high"] = np.nanquantile(boot, [tail, 1 - tail])
            rows.append(row)
    return pd.DataFrame(rows)


# ----- reading the curves -------------------------------------------------------------------------------
def _sides(group: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The m >= 0 and the m <= 0 half of one curve, each ordered by growing |m|."""
    return group[group.m >= 0].sort_values("m"), group[group.m <= 0].sort_values("m", ascending=False)


def moving_away(curves: pd.DataFrame, by: Sequence[str] = ("method", "form", "hidden_state")) -> pd.Series:
    """For each curve (`by`), distance and side of the origin: True if the distance never falls
    as |m| grows (steering only ever moves the activations further from the unsteered cloud)."""
    result = {}
    for key, group in curves.groupby(list(by)):
        for side_name, side in zip(("m >= 0", "m <= 0"), _sides(group)):
            for name in DISTANCES:
                never_falls = bool(np.all(np.diff(side[name].to_numpy()) >= -1e-9))
                result[(*(key if isinstance(key, tuple) else (key,)), side_name, name)] = never_falls
    return pd.Series(result, dtype=bool)


def utility_at_distance(curves: pd.DataFrame, measure: str, ratio: float) -> pd.Series:
    """Each curve's utility change (`util_drop`) where `measure` reaches `ratio` times its
    unsteered value, interpolated, per (method, form, side); curves that never get so far are left out."""
    if measure not in DISTANCES:
        raise ValueError(f"unknown distance {measure!r}; choose one of {DISTANCES}")
    result = {}
    for (method, form), group in curves.groupby(["method", "form"]):
        for side_name, side in zip(("m >= 0", "m <= 0"), _sides(group)):
            if side[measure].max() >= ratio:
                side = side.sort_values(measure)
                result[(method, form, side_name)] = float(np.interp(ratio, side[measure], side.util_drop))
    return pd.Series(result, dtype=float)
