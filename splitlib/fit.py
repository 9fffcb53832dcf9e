"""Rational-quadratic decay fits of PrefOdds(m) and UtilOdds(m) (the paper's Eqs. 12, 15, 17).

    D(m) = [1 + (m - m+)^2 / L+]^(-p+)   for m >= 0
    D(m) = [1 + (m - m-)^2 / L-]^(-p-)   for m < 0
    PrefOdds(m) = (alpha*m + beta) * D_p(m) + b       (9 parameters)
    UtilOdds(m) = beta_u * D_u(m) + b_u               (8 parameters)

Fitted with SLSQP from several seeded starts, with the equality constraint D+(0) = D-(0) (the
two pieces meet at the origin) and bounds that keep the parameters meaningful:

- m and the curve are first scaled to unit size (m / R with R the largest |m| of the grid; y by
  its spread), so one set of bounds serves every grid;
- decay centres: m+ in [-R/2, R] and m- in [-R, R/2]: a centre far outside the swept range is not
  identified by the data, and the centre sits on its own side of the origin or close to it;
- decay scales L in [(R/100)^2, (10R)^2] and rates p in [0.05, 10]: positive, and a decay no
  sharper than one grid step of a 100-point grid nor slower than ten times the range;
- beta_u >= 0: the unsteered utility is the decaying part's height above the floor b_u; a
  negative beta_u would turn the bell the data show into a trough;
- alpha, beta, b, b_u within 20 spreads of the data.

A fit can meet every bound and still draw a curve its data do not support: a spike between two
grid points, or a near-vertical step where the decay's scale shrank below the grid's spacing.
`shape_warnings` looks for both on a dense grid between the data's multipliers; a fit with
warnings is still `ok` (it has numbers) but not `shape_ok`, and the chapters draw and print it as
flagged. Region boundaries outside the swept range are extrapolations: `Fit.extrapolated` says
which.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from .checks import check_number, check_positive_int

PREF_PARAMS = ("alpha", "beta", "b", "m_pos", "L_pos", "p_pos", "m_neg", "L_neg", "p_neg")
UTIL_PARAMS = ("beta_u", "b_u", "m_pos", "L_pos", "p_pos", "m_neg", "L_neg", "p_neg")
TANH_PARAMS = ("a", "k", "c", "d")


def decay(m: np.ndarray, m_pos: float, L_pos: float, p_pos: float, m_neg: float, L_neg: float,
          p_neg: float) -> np.ndarray:
    """The piecewise rational-quadratic validity decay D(m) of Eq. 12."""
    m = np.asarray(m, dtype=float)
    positive = (1 + (m - m_pos) ** 2 / L_pos) ** (-p_pos)
    negative = (1 + (m - m_neg) ** 2 / L_neg) ** (-p_neg)
    return np.where(m >= 0, positive, negative)


def preference_curve(m: np.ndarray, alpha: float, beta: float, b: float, *decay_params: float) -> np.ndarray:
    """Eq. 15: (alpha*m + beta) * D_p(m) + b."""
    return (alpha * np.asarray(m, dtype=float) + beta) * decay(m, *decay_params) + b


def utility_curve(m: np.ndarray, beta_u: float, b_u: float, *decay_params: float) -> np.ndarray:
    """Eq. 17: beta_u * D_u(m) + b_u."""
    return beta_u * decay(m, *decay_params) + b_u


def tanh_curve(m: np.ndarray, a: float, k: float, c: float, d: float) -> np.ndarray:
    """The 4-parameter baseline: a * tanh(k*m + c) + d."""
    return a * np.tanh(k * np.asarray(m, dtype=float) + c) + d


def r_squared(y: np.ndarray, fitted: np.ndarray) -> float:
    """1 - SS_res / SS_tot; negative when the curve is worse than the mean (reported as it is)."""
    y, fitted = np.asarray(y, dtype=float), np.asarray(fitted, dtype=float)
    total = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if total == 0 else 1.0 - float(np.sum((y - fitted) ** 2)) / total


@dataclass
class Fit:
    """A fitted curve: its kind, parameters (in the data's units), R² and the data it was fitted to.

    `flag` is empty when the data could be fitted; otherwise it says why there are no numbers.
    `warnings` lists where a fitted curve departs from its data between grid points (see
    `shape_warnings`); empty for a curve that follows its data.
    """

    kind: str
    params: dict[str, float]
    r2: float
    m: np.ndarray
    y: np.ndarray
    flag: str = ""
    constraint_gap: float = 0.0
    derived: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __call__(self, m: np.ndarray) -> np.ndarray:
        values = list(self.params.values())
        curves: dict[str, Callable[..., np.ndarray]] = {
            "preference": preference_curve, "utility": utility_curve, "tanh": tanh_curve
        }
        return curves[self.kind](m, *values)

    def validity(self, m: np.ndarray) -> np.ndarray:
        """The fitted decay D(m) alone (D_p or D_u), without the read-out around it."""
        if self.kind == "tanh" or not self.ok:
            raise ValueError(f"a {self.kind} fit{' (flagged: ' + self.flag + ')' if self.flag else ''} has no decay")
        return decay(m, *(self.params[name] for name in PREF_PARAMS[3:]))

    def r2_on(self, m: np.ndarray, y: np.ndarray) -> float:
        """R² of this curve on other data (a train fit on the test split: generalisation)."""
        return r_squared(y, self(m))

    @property
    def ok(self) -> bool:
        """The data could be fitted: the parameters are numbers."""
        return not self.flag

    @property
    def shape_ok(self) -> bool:
        """Fitted, and the curve stays with its data between grid points (no shape warnings)."""
        return self.ok and not self.warnings

    @property
    def grid_range(self) -> tuple[float, float]:
        """The smallest and largest multiplier of the data."""
        return float(np.min(self.m)), float(np.max(self.m))

    def inside(self, value: float) -> bool:
        """Whether a multiplier lies within the data's range (else the fit extrapolates to it)."""
        low, high = self.grid_range
        return bool(np.isfinite(value) and low <= value <= high)

    @property
    def extrapolated(self) -> dict[str, bool]:
        """For each region boundary in `derived`: True where it lies outside the swept range."""
        return {name: not self.inside(value) for name, value in self.derived.items()
                if not name.startswith("slope")}


# ----- input checks --------------------------------------------------------------------------------------
def _check(m: np.ndarray, y: np.ndarray, n_params: int) -> str:
    """'' if the data can be fitted, else why not (the fit is returned flagged, never silently)."""
    if m.shape != y.shape or m.ndim != 1:
        raise ValueError(f"m and y must be 1-D and of one length, got {m.shape} and {y.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(y))):
        return "the curve has NaN or infinite values"
    if len(np.unique(m)) < n_params + 1:
        return f"{len(np.unique(m))} distinct multipliers cannot determine {n_params} parameters"
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return "the curve is flat: there is no decay to fit"
    with np.errstate(over="ignore", invalid="ignore"):
        if not (np.isfinite(np.var(y)) and np.isfinite(np.var(m))):
            return (f"the values are too large to fit (up to {float(np.abs(y).max()):.3g} in y and "
                    f"{float(np.abs(m).max()):.3g} in m): their variance overflows float64")
    if not (np.any(m < 0) and np.any(m > 0)):
        return "the grid must have multipliers on both sides of 0"
    return ""


def _guarded(fit: Fit) -> Fit:
    """`fit`, flagged if a parameter or R² came out NaN or infinite (an overflow): a fit is never
    ok with numbers that cannot be used."""
    bad = [name for name, value in fit.params.items() if not np.isfinite(value)]
    if not np.isfinite(fit.r2):
        bad.append("r2")
    if bad and not fit.flag:
        fit.flag = f"the fit is not finite: {', '.join(bad)} came out NaN or infinite (an overflow)"
    return fit


def _flagged(kind: str, names: tuple[str, ...], m: np.ndarray, y: np.ndarray, why: str) -> Fit:
    return Fit(kind, dict.fromkeys(names, float("nan")), float("nan"), m, y, flag=why)


# ----- fitting ---------------------------------------------------------------------------------------------
def _decay_bounds() -> list[tuple[float, float]]:
    # in unit-scaled m: m+ in [-1/2, 1], L in [1e-4, 100], p in [0.05, 10]; m- mirrored
    return [(-0.5, 1.0), (1e-4, 100.0), (0.05, 10.0), (-1.0, 0.5), (1e-4, 100.0), (0.05, 10.0)]


def _continuity(decay_params: np.ndarray) -> float:
    m_pos, L_pos, p_pos, m_neg, L_neg, p_neg = decay_params
    return (1 + m_pos**2 / L_pos) ** (-p_pos) - (1 + m_neg**2 / L_neg) ** (-p_neg)


def _fit(kind: str, m: np.ndarray, y: np.ndarray, restarts: int, seed: int, start: dict | None) -> Fit:
    check_positive_int("restarts", restarts)
    names = PREF_PARAMS if kind == "preference" else UTIL_PARAMS
    why = _check(m, y, len(names))
    if why:
        return _flagged(kind, names, m, y, why)
    scale_m = float(np.abs(m).max())
    centre, spread = float(np.mean(y)), float(np.std(y))
    x, z = m / scale_m, (y - centre) / spread
    head_bounds = [(-20.0, 20.0)] * 3 if kind == "preference" else [(0.0, 20.0 * 2), (-20.0, 20.0)]
    bounds = head_bounds + _decay_bounds()
    n_head = len(head_bounds)

    def model(theta: np.ndarray) -> np.ndarray:
        if kind == "preference":
            return preference_curve(x, *theta)
        return utility_curve(x, *theta)

    def loss(theta: np.ndarray) -> float:
        return float(np.mean((model(theta) - z) ** 2))

    rng = np.random.default_rng(seed)
    starts = []
    if start is not None:
        starts.append(_to_unit(kind, start, scale_m, centre, spread))
    base_decay = [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    base_head = [0.5, 0.0, 0.0] if kind == "preference" else [2.0, -1.0]
    starts.append(np.array(base_head + base_decay))
    while len(starts) < restarts:
        starts.append(np.array([rng.uniform(lo, hi) if hi - lo < 50 else rng.uniform(-2, 2) for lo, hi in bounds]))
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # trial points far out overflow harmlessly
        for theta0 in starts:
            theta0 = np.clip(theta0, [lo for lo, _ in bounds], [hi for _, hi in bounds])
            result = minimize(loss, theta0, method="SLSQP", bounds=bounds,
                              constraints=[{"type": "eq", "fun": lambda t: _continuity(t[n_head:])}],
                              options={"maxiter": 500, "ftol": 1e-12})
            gap = abs(_continuity(result.x[n_head:]))
            if np.isfinite(result.fun) and gap < 1e-6 and (best is None or result.fun < best[0]):
                best = (result.fun, result.x, gap)
    if best is None:
        return _flagged(kind, names, m, y, "no start converged to a fit that meets the continuity constraint")
    params = [float(v) for v in _from_unit(kind, best[1], scale_m, centre, spread)]
    fit = Fit(kind, dict(zip(names, params)), 0.0, m, y, constraint_gap=best[2])
    with np.errstate(all="ignore"):
        fit.r2 = r_squared(y, fit(m))
    fit = _guarded(fit)
    fit.derived = derived_quantities(fit)  # empty for a flagged fit
    fit.warnings = shape_warnings(fit)
    return fit


def _from_unit(kind: str, theta: np.ndarray, scale_m: float, centre: float, spread: float) -> list[float]:
    """Parameters fitted on (m/R, (y - centre)/spread) back in the data's units."""
    m_pos, L_pos, p_pos, m_neg, L_neg, p_neg = theta[-6:]
    decay_params = [m_pos * scale_m, L_pos * scale_m**2, p_pos, m_neg * scale_m, L_neg * scale_m**2, p_neg]
    if kind == "preference":
        alpha, beta, b = theta[:3]
        return [alpha * spread / scale_m, beta * spread, b * spread + centre] + decay_params
    beta_u, b_u = theta[:2]
    return [beta_u * spread, b_u * spread + centre] + decay_params


def _to_unit(kind: str, params: dict, scale_m: float, centre: float, spread: float) -> np.ndarray:
    p = list(params.values())
    m_pos, L_pos, p_pos, m_neg, L_neg, p_neg = p[-6:]
    decay_params = [m_pos / scale_m, L_pos / scale_m**2, p_pos, m_neg / scale_m, L_neg / scale_m**2, p_neg]
    if kind == "preference":
        return np.array([p[0] * scale_m / spread, p[1] / spread, (p[2] - centre) / spread] + decay_params)
    return np.array([p[0] / spread, (p[1] - centre) / spread] + decay_params)


def fit_preference(m, y, restarts: int = 8, seed: int = 0, start: dict | None = None) -> Fit:
    """Fit Eq. 15 to a mean PrefOdds curve."""
    return _fit("preference", np.asarray(m, dtype=float), np.asarray(y, dtype=float), restarts, seed, start)


def fit_utility(m, y, restarts: int = 8, seed: int = 0, start: dict | None = None) -> Fit:
    """Fit Eq. 17 to a mean UtilOdds curve."""
    return _fit("utility", np.asarray(m, dtype=float), np.asarray(y, dtype=float), restarts, seed, start)


def fit_tanh(m, y, restarts: int = 8, seed: int = 0) -> Fit:
    """The 4-parameter tanh baseline, least squares from seeded starts."""
    check_positive_int("restarts", restarts)
    m, y = np.asarray(m, dtype=float), np.asarray(y, dtype=float)
    why = _check(m, y, len(TANH_PARAMS))
    if why:
        return _flagged("tanh", TANH_PARAMS, m, y, why)
    scale_m, centre, spread = float(np.abs(m).max()), float(np.mean(y)), float(np.std(y))
    x, z = m / scale_m, (y - centre) / spread
    rng = np.random.default_rng(seed)
    best = None
    for k in range(restarts):
        theta0 = np.array([1.0, 1.0, 0.0, 0.0]) if k == 0 else rng.uniform([-3, -10, -3, -3], [3, 10, 3, 3])
        result = minimize(lambda t: float(np.mean((tanh_curve(x, *t) - z) ** 2)), theta0, method="L-BFGS-B",
                          bounds=[(-50, 50), (-100, 100), (-50, 50), (-50, 50)])
        if best is None or result.fun < best.fun:
            best = result
    assert best is not None  # restarts >= 1
    a, k_, c, d = best.x
    params = {"a": float(a * spread), "k": float(k_ / scale_m), "c": float(c), "d": float(d * spread + centre)}
    fit = Fit("tanh", params, 0.0, m, y)
    with np.errstate(all="ignore"):
        fit.r2 = r_squared(y, fit(m))
    fit = _guarded(fit)
    fit.warnings = shape_warnings(fit)
    return fit


# ----- does the curve follow its data? ---------------------------------------------------------------------
def shape_warnings(fit: Fit, tolerance: float = 0.15, points: int = 51) -> list[str]:
    """Where a fitted curve departs from its data between grid points, as sentences (empty if
    nowhere).

    Between each pair of neighbouring multipliers the curve is evaluated at `points` points. It
    *spikes* if it leaves the band spanned by the two data values and its own values at the two
    grid points by more than `tolerance` of the data's range; it *steps* if it moves by more than
    `tolerance` of the range within one of those dense steps, or by more than a third of that
    and more than half of all its movement in the interval (a decay sharper than anything the
    grid can see, e.g. right at m = 0). Either is a shape the data do not support.
    """
    check_number("tolerance", tolerance, 0, open_low=True)
    check_positive_int("points", points)
    if not fit.ok:
        return []
    m = np.unique(fit.m)
    y = np.array([fit.y[fit.m == value].mean() for value in m])
    span = float(np.ptp(y)) or 1.0
    with np.errstate(all="ignore"):
        at_grid = fit(m)
    spikes, steps = [], []
    for left, right, y_pair, f_pair in zip(m[:-1], m[1:], zip(y[:-1], y[1:]), zip(at_grid[:-1], at_grid[1:])):
        dense = np.linspace(left, right, points)
        with np.errstate(all="ignore"):
            values = fit(dense)
        if not np.all(np.isfinite(values)):
            return [f"the curve is not finite between m = {left:.3g} and {right:.3g}"]
        low, high = min(*y_pair, *f_pair), max(*y_pair, *f_pair)
        excess = max(float(values.max()) - high, low - float(values.min()), 0.0) / span
        if excess > tolerance:
            spikes.append((excess, left, right))
        changes = np.abs(np.diff(values))
        jump = float(changes.max()) / span
        # a step: one dense step (1/(points-1) of the interval) carries a large share of the
        # range, or most of the interval's change while a smooth curve would spread it out
        if jump > tolerance or (jump > tolerance / 3 and changes.max() > 0.5 * changes.sum()):
            steps.append((jump, left, right))
    out = []
    for what, found, verb in (("spike", spikes, "leaves its data by"), ("step", steps, "jumps by")):
        if found:
            size, left, right = max(found)
            more = f" (and {len(found) - 1} more interval{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
            out.append(f"{what}: between m = {left:.3g} and {right:.3g} the curve {verb} {size:.0%} of the "
                       f"data's range{more}")
    return out


# ----- what the fits say -----------------------------------------------------------------------------------
def crossing(centre: float, scale: float, rate: float, level: float, side: int) -> float:
    """Where one piece of D falls to `level` beyond its centre: m± ± sqrt(L (level^(-1/p) - 1))."""
    return centre + side * float(np.sqrt(scale * (level ** (-1.0 / rate) - 1.0)))


def derived_quantities(fit: Fit, linear_level: float = 0.9, convergence_level: float = 0.1) -> dict[str, float]:
    """Region boundaries on each side and the breakdown multiplier (D = 0.5).

    The linear region ends where D has fallen to `linear_level` (10 % decay by default), the
    transitional region ends (and convergence begins) where D reaches `convergence_level`. For the
    preference fit, the linear-region slope on each side is the one-sided derivative of PrefOdds
    at m = 0 (the pieces meet at 0 but their slopes need not).
    """
    if fit.kind == "tanh" or not fit.ok:
        return {}
    p = fit.params
    out = {}
    for side, name in ((1, "pos"), (-1, "neg")):
        args = (p[f"m_{name}"], p[f"L_{name}"], p[f"p_{name}"])
        out[f"linear_end_{name}"] = crossing(*args, linear_level, side)
        out[f"breakdown_{name}"] = crossing(*args, 0.5, side)
        out[f"convergence_start_{name}"] = crossing(*args, convergence_level, side)
    if fit.kind == "preference":
        step = 1e-6 * max(1.0, float(np.abs(fit.m).max()))
        at_zero = fit(np.array([0.0]))[0]
        out["slope_pos"] = float((fit(np.array([step]))[0] - at_zero) / step)
        out["slope_neg"] = float((at_zero - fit(np.array([-step]))[0]) / step)
    return out


def bootstrap(per_pair, column: str, kind: str, n_boot: int = 100, seed: int = 0, level: float = 0.95,
              x: str = "m") -> tuple[Fit, dict[str, tuple[float, float]]]:
    """The fit of the mean curve over pairs, and percentile intervals of its R² and derived
    quantities from refits of bootstrap resamples of the pairs (each warm-started at the fit)."""
    check_positive_int("n_boot", n_boot)
    check_number("level", level, 0, 1, open_low=True, open_high=True)
    table = per_pair.pivot_table(index="pair_id", columns=x, values=column, aggfunc="first")
    if table.isna().any().any():
        raise ValueError(f"every pair needs a {column} value at every {x} for the bootstrap")
    grid, values = table.columns.to_numpy(dtype=float), table.to_numpy(dtype=float)
    fitter = {"preference": fit_preference, "utility": fit_utility}[kind]
    point = fitter(grid, values.mean(axis=0), seed=seed)
    if not point.ok:
        return point, {}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"r2": []}
    for _ in range(n_boot):
        rows = rng.integers(0, len(values), size=len(values))
        refit = fitter(grid, values[rows].mean(axis=0), restarts=2, seed=seed, start=point.params)
        if refit.ok:
            samples["r2"].append(refit.r2)
            for name, value in refit.derived.items():
                samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2
    intervals = {name: (float(np.quantile(v, tail)), float(np.quantile(v, 1 - tail)))
                 for name, v in samples.items() if v}
    return point, intervals


def choose_from_fits(preference: Fit, utility: Fit, tolerance: float = 1.0, points: int = 2001) -> float:
    """The practitioner's rule: the m >= 0 with the largest fitted preference among those whose
    fitted utility is at most `tolerance` nats below the fitted utility at m = 0."""
    if not (preference.ok and utility.ok):
        raise ValueError(f"cannot choose m from a flagged fit ({preference.flag or utility.flag})")
    top = float(max(preference.m.max(), utility.m.max()))
    grid = np.linspace(0.0, top, points)
    allowed = utility(grid) >= utility(np.array([0.0]))[0] - tolerance
    return float(grid[allowed][np.argmax(preference(grid)[allowed])])
