"""Chapter 5's evaluation: one m per update chosen on the training split, the updates compared at
it (the layout of the paper's Table 3), and SPLIT's knobs ablated.

Built on `scoring` (summaries and the rule for m), `train` and `sweep`; the chapter calls these
instead of looping over updates itself.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from .checks import check_int
from .scoring import choose_multiplier, summarise

if TYPE_CHECKING:
    from torch import nn

    from .data import PolarityPair, TaskData
    from .interventions import Intervention
    from .judge import Agreement, Judge
    from .profiles import Profile, TrainConfig
    from .scoring import Tokenizer

UpdateKey = tuple[str, str]  # (method, form)
TABLE_COLUMNS = ("accuracy", "pref_odds", "util_odds")
INTERVALS = tuple(f"{name}_{end}" for name in TABLE_COLUMNS for end in ("low", "high"))


def update_rows(table: pd.DataFrame, key: UpdateKey, split: str, what: str = "summary") -> pd.DataFrame:
    """The rows of one update (method, form) on one split of a sweep or summary table, or an error
    naming what is missing."""
    rows = table[(table.method == key[0]) & (table.form == key[1]) & (table.split == split)]
    if rows.empty:
        raise ValueError(f"the {what} has no {split} rows for {update_name(key)}")
    return rows


def _by_update(table: pd.DataFrame) -> pd.DataFrame:
    """An `at_chosen` table indexed by update name ("unsteered", "split · lora", ...)."""
    names = ["unsteered" if method == "unsteered" else update_name((method, form))
             for method, form in zip(table.method, table.form, strict=True)]
    return table.assign(update=names).set_index("update")


def sweep_at(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], update: Intervention,
             m: float, profile: Profile) -> pd.DataFrame:
    """`pairs` swept (summed losses) at 0 and at `m`, summarised: two rows, the unsteered model and
    the update at m, each with accuracy, PrefOdds and UtilOdds and their intervals."""
    from .sweep import run_sweep

    sweep = run_sweep(model, tokenizer, pairs, update, [0.0, m], loss="sum", settings=profile.engine)
    return summarise(sweep, by=("m",), seed=profile.seed)


def choose_multipliers(summary: pd.DataFrame, updates: Iterable[UpdateKey], tolerance: float = 1.0
                       ) -> dict[UpdateKey, float]:
    """Each update's m by `scoring.choose_multiplier`, read on its *training*-split summary only."""
    return {key: choose_multiplier(update_rows(summary, key, "train"), tolerance=tolerance) for key in updates}


def at_chosen(summary: pd.DataFrame, chosen: Mapping[UpdateKey, float], split: str = "test") -> pd.DataFrame:
    """One row per update at its chosen m (and the unsteered model first): accuracy, PrefOdds and
    UtilOdds on `split`, with their bootstrap intervals."""
    if not chosen:
        raise ValueError("no chosen multipliers: pass {(method, form): m}")
    first = update_rows(summary, next(iter(chosen)), split)
    unsteered = first[first.m == 0]
    if unsteered.empty:
        raise ValueError(f"the {split} summary has no unsteered point (m = 0)")
    rows = [{"form": "-", "method": "unsteered", "m": 0.0, **unsteered.iloc[0][list(TABLE_COLUMNS + INTERVALS)]}]
    for key, m in chosen.items():
        at = update_rows(summary, key, split)
        at = at[at.m == m]
        if at.empty:
            raise ValueError(f"{' · '.join(key)} has no {split} point at its chosen m = {m:g}")
        rows.append({"form": key[1], "method": key[0], "m": m, **at.iloc[0][list(TABLE_COLUMNS + INTERVALS)]})
    return pd.DataFrame(rows)


# The book's rule and its alternatives, each read on the training split only.
BOOK_RULE = "best accuracy within tolerance"
FITTED_RULE = "fitted curves"
FIXED_RULE = "m = 1 (reference code)"
RULES = (BOOK_RULE, FITTED_RULE, FIXED_RULE)


def rule_multipliers(summary: pd.DataFrame, fits: Mapping[tuple[str, str, str, str], Any],
                     updates: Iterable[UpdateKey], tolerance: float = 1.0) -> dict[str, dict[UpdateKey, float]]:
    """Each rule's m per update: the book's (`choose_multipliers` on the training summary), the
    fitted-curve rule (`fit.choose_from_fits` on the training fits; NaN where a fit is flagged)
    and the reference code's fixed m = 1."""
    from .fit import choose_from_fits

    updates = list(updates)
    fitted = {}
    for method, form in updates:
        pref, util = fits[(method, form, "train", "pref")], fits[(method, form, "train", "util")]
        fitted[(method, form)] = (choose_from_fits(pref, util, tolerance=tolerance) if pref.ok and util.ok
                                  else float("nan"))
    return {BOOK_RULE: choose_multipliers(summary, updates, tolerance=tolerance), FITTED_RULE: fitted,
            FIXED_RULE: dict.fromkeys(updates, 1.0)}


def rule_comparison(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair],
                    trained: Mapping[UpdateKey, Intervention], summary: pd.DataFrame,
                    fits: Mapping[tuple[str, str, str, str], Any], profile: Profile, tolerance: float = 1.0,
                    split: str = "test") -> pd.DataFrame:
    """Every update at each rule's m (`rule_multipliers`), read on `pairs` (the `split` of
    `summary`): accuracy, PrefOdds and UtilOdds with intervals, from the summary where m is on its
    grid, else from a sweep at 0 and m (cached)."""
    rows = []
    for rule, chosen in rule_multipliers(summary, fits, trained, tolerance).items():
        for key, m in chosen.items():
            if m != m:  # NaN: the rule has no answer for this update
                rows.append({"rule": rule, "method": key[0], "form": key[1], "m": m})
                continue
            on_grid = update_rows(summary, key, split)
            at = on_grid[on_grid.m == m]
            point = at.iloc[0] if not at.empty else sweep_at(model, tokenizer, pairs, trained[key], m, profile).iloc[-1]
            rows.append({"rule": rule, "method": key[0], "form": key[1], "m": m,
                         **point[list(TABLE_COLUMNS + INTERVALS)]})
    return pd.DataFrame(rows)


def method_leads(table: pd.DataFrame, method: str = "split") -> tuple[int, int]:
    """(wins, forms): in how many forms `method` is at least as accurate as every other trained
    method of the form, over the forms where it and every other method have an accuracy."""
    trained = table[~table.method.isin(["diffmean", "unsteered"])]
    forms = [part for _, part in trained.groupby("form", sort=False)
             if (part.method == method).any() and part.accuracy.notna().all()]
    wins = sum(float(part[part.method == method].accuracy.iloc[0]) >= float(part[part.method != method].accuracy.max())
               for part in forms)
    return wins, len(forms)


def rule_verdicts(comparison: pd.DataFrame, method: str = "split") -> pd.DataFrame:
    """Per rule, `method_leads` at that rule's m (`wins` of `forms`): whether a conclusion
    survives a different rule."""
    rows = []
    for rule, group in comparison.groupby("rule", sort=False):
        wins, forms = method_leads(group, method)
        rows.append({"rule": rule, "forms": forms, "wins": wins})
    return pd.DataFrame(rows)


def rule_conclusions(verdicts: pd.DataFrame, method: str = "split") -> dict[str, str]:
    """`rule_verdicts` in the words of `conclusions`: the book's rule under its name there ("SPLIT
    the most accurate"), each other rule after a comma ("SPLIT the most accurate, fitted curves")."""
    lead = f"{method.upper()} the most accurate"
    return {lead if row.rule == BOOK_RULE else f"{lead}, {row.rule}": f"in {row.wins} of {row.forms} forms"
            for row in verdicts.itertuples()}


def frontier_reach(summary: pd.DataFrame, tolerance: float = 1.0, split: str = "test") -> pd.DataFrame:
    """Per method and form: the highest mean PrefOdds (with its interval, and the m where it is
    reached) among the m >= 0 whose mean UtilOdds stays within `tolerance` nats below the
    unsteered model's: how much preference each update buys at matched utility."""
    part = summary[(summary.split == split) & (summary.m >= 0)]
    unsteered = part[part.m == 0]
    if unsteered.empty:
        raise ValueError(f"the {split} summary has no unsteered point (m = 0)")
    within = part[part.util_odds >= float(unsteered.util_odds.iloc[0]) - tolerance]
    best = within.loc[within.groupby(["method", "form"], sort=False).pref_odds.idxmax()]
    return best[["method", "form", "m", "pref_odds", "pref_odds_low", "pref_odds_high"]].reset_index(drop=True)


def split_verdicts(reach: pd.DataFrame, method: str = "split") -> pd.DataFrame:
    """Per form, `method`'s reach (`frontier_reach`) against the best other trained method's, and
    the verdict the intervals allow: "leads" (its interval lies above every other method's),
    "trails" (another's lies above its own) or "ties"."""
    rows = []
    for form, group in reach[reach.method != "diffmean"].groupby("form", sort=False):
        own, others = group[group.method == method], group[group.method != method]
        if own.empty or others.empty:
            continue
        mine, best = own.iloc[0], others.loc[others.pref_odds.idxmax()]
        verdict = ("leads" if mine.pref_odds_low > others.pref_odds_high.max()
                   else "trails" if mine.pref_odds_high < others.pref_odds_low.max() else "ties")
        rows.append({"form": form, "verdict": verdict, "reach": mine.pref_odds, "reach_low": mine.pref_odds_low,
                     "reach_high": mine.pref_odds_high, "best other": best.method, "other reach": best.pref_odds,
                     "other reach_low": best.pref_odds_low, "other reach_high": best.pref_odds_high})
    return pd.DataFrame(rows)


def verdict_sentence(verdicts: pd.DataFrame, method: str = "SPLIT") -> str:
    """`split_verdicts` in words: "SPLIT leads in vector, ties in LoRA and trails in local weight"."""
    if verdicts.empty:
        return f"{method} has no form to compare"
    parts = [f"{verdict} in {form.replace('_', ' ')}" for form, verdict in zip(verdicts.form, verdicts.verdict)]
    return f"{method} " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def most_accurate(table: pd.DataFrame) -> pd.Series:
    """The row of `at_chosen`'s table with the highest accuracy (then PrefOdds), the unsteered row aside."""
    return table.iloc[1:].sort_values(["accuracy", "pref_odds"], ascending=False).iloc[0]


def weight_updates(table: pd.DataFrame) -> pd.DataFrame:
    """The trained LoRA and local-weight rows of `at_chosen`'s table: those the book's 90 % mark is for."""
    return table[(table.form != "vector") & ~table.method.isin(["diffmean", "unsteered"])]


def conclusions(summary: pd.DataFrame, chosen: Mapping[UpdateKey, float], tolerance: float = 1.0,
                method: str = "split") -> dict[str, str]:
    """Chapter 5's conclusions from one set of updates, in words: in how many forms `method` is the
    most accurate at its chosen m (`method_leads`), its verdict per form at matched utility
    (`split_verdicts`), the most accurate update (its accuracy is a number, not a conclusion), and
    how many LoRA and local-weight updates of the trained methods reach 90 % on the test split.
    What `splitlib.seeds` compares across seeds."""
    table = at_chosen(summary, chosen, split="test")
    wins, forms = method_leads(table, method)
    verdicts = split_verdicts(frontier_reach(summary, tolerance), method)
    best, weights = most_accurate(table), weight_updates(table)
    name = method.upper()
    return {f"{name} the most accurate": f"in {wins} of {forms} forms",
            **{f"{name} at matched utility, {form.replace('_', ' ')}": verdict
               for form, verdict in zip(verdicts.form, verdicts.verdict)},
            "the most accurate update": update_name((best.method, best.form.replace("_", " "))),
            "LoRA and local weight at 90 % or more": f"{int((weights.accuracy >= 0.9).sum())} of {len(weights)}"}


BASE_VARIANT = "as configured"
NO_HINGE, NO_LOSING_TERM = "γ = 0", "λ_n = 0"  # the ablation's variants


def knob_variants(base: TrainConfig) -> dict[str, TrainConfig]:
    """SPLIT's configuration as given and with each of its two terms beyond SFT switched off alone:
    the losing answer's term (λ_n = 0) and the hinge (γ = 0)."""
    variants = {BASE_VARIANT: base}
    for name, knob in ((NO_LOSING_TERM, "lambda_n"), (NO_HINGE, "gamma")):
        changes: dict[str, Any] = {knob: 0.0}
        variants[name] = dataclasses.replace(base, **changes)
    return variants


def ablation(model: nn.Module, tokenizer: Tokenizer, train: Sequence[PolarityPair], test: Sequence[PolarityPair],
             profile: Profile, variants: Mapping[str, TrainConfig], m: float, method: str = "split",
             form: str = "lora", training_seed: int | None = None) -> pd.DataFrame:
    """Train each variant (cached; at `training_seed` if given) and report its test accuracy,
    PrefOdds and UtilOdds at `m`, with intervals (bootstrapped at the profile's seed): what each
    knob of the objective is for."""
    from .train import train_for_profile

    training = profile if training_seed is None else dataclasses.replace(profile, seed=check_int("training_seed",
                                                                                                  training_seed))
    rows = []
    for name, config in variants.items():
        update: Intervention = train_for_profile(model, tokenizer, train, method, form, config, training)
        at = sweep_at(model, tokenizer, test, update, m, profile).iloc[-1]
        rows.append({"variant": name, **at[list(TABLE_COLUMNS + INTERVALS)]})
    return pd.DataFrame(rows)


def ablation_spread(ablation_table: pd.DataFrame) -> tuple[float, float]:
    """(the largest change in mean PrefOdds between the ablation's variants, the half width of the
    configured variant's 95 % band): a spread within the band does not separate the knobs."""
    by = ablation_table.set_index("variant")
    base = by.loc[BASE_VARIANT]
    return float(by.pref_odds.max() - by.pref_odds.min()), float(base.pref_odds_high - base.pref_odds_low) / 2


def ablation_conclusions(ablation_table: pd.DataFrame) -> dict[str, str]:
    """The ablation (`ablation` of `knob_variants`) in words: whether removing the hinge lowers the
    mean PrefOdds and removing the losing answer's term the mean UtilOdds (the paper's account of
    the two knobs), and whether the largest change in PrefOdds between variants exceeds the half
    width of the configured variant's band."""
    by = ablation_table.set_index("variant")
    base = by.loc[BASE_VARIANT]
    spread, band = ablation_spread(ablation_table)
    return {"PrefOdds without the hinge (γ = 0)": "lower" if by.pref_odds[NO_HINGE] < base.pref_odds else "not lower",
            "UtilOdds without the losing answer's term (λ_n = 0)":
                "lower" if by.util_odds[NO_LOSING_TERM] < base.util_odds else "not lower",
            "the ablation": ("separates the knobs by more than the noise" if spread > band
                             else "does not separate the knobs' roles beyond the noise")}


# ----- every task at its chosen m: the paper's Table 3 ---------------------------------------------------
JUDGE_COLUMNS = {"powerseeking": ("powerseeking_score",), "axbench": ("concept_score", "harmonic_mean")}


@dataclass
class TaskEvaluation:
    """One task evaluated the way chapter 5 evaluates Psychopathy, plus generations for a judge."""

    task: str
    data: TaskData
    summary: pd.DataFrame  # `scoring.summarise` per method, form, split and m (m >= 0)
    chosen: dict[UpdateKey, float]  # each update's m, chosen on the training split
    table: pd.DataFrame  # `at_chosen` on the test split: share preferring A_p, PrefOdds, UtilOdds
    generations: pd.DataFrame | None = None  # at the chosen m, on the first test questions
    judged: pd.DataFrame | None = None  # the generations with the judge's scores

    @property
    def scores(self) -> pd.DataFrame | None:
        """Mean judge scores per update (`judge.judgment_summary`), or None without a judge."""
        from .judge import judgment_summary

        return None if self.judged is None else judgment_summary(self.judged)


def update_name(key: UpdateKey) -> str:
    """How tables and generations name an update: "split · lora"."""
    return " · ".join(key)


@dataclass(frozen=True)
class TaskUpdates:
    """One task's pairs, every update trained on its training split (cached) and the residual-norm
    unit that scales DiffMean: what chapters 3, 4 and 5 sweep and measure for each task."""

    data: TaskData
    trained: dict[UpdateKey, Intervention]
    unit: float

    def sweeps(self, model: nn.Module, tokenizer: Tokenizer, profile: Profile, *, negative: bool = True
               ) -> pd.DataFrame:
        """`train.evaluation_sweeps` of every update on both splits (cached, shared by the chapters)."""
        from .train import evaluation_sweeps

        return evaluation_sweeps(model, tokenizer, {"train": self.data.train, "test": self.data.test}, self.trained,
                                 profile, self.unit, negative=negative)


def task_updates(model: nn.Module, tokenizer: Tokenizer, profile: Profile, task: str,
                 training_seed: int | None = None) -> TaskUpdates:
    """`task`'s data loaded and every method and form trained on its training split (cached);
    `training_seed` trains at another seed on the same split (`splitlib.seeds`)."""
    from .data import load_task
    from .train import residual_norm, train_all

    if training_seed is not None:
        check_int("training_seed", training_seed)
    data = load_task(task, profile, model, tokenizer)  # the profile's split, whatever the training seed
    training = profile if training_seed is None else dataclasses.replace(profile, seed=training_seed)
    trained = train_all(model, tokenizer, data.train, training, task)
    return TaskUpdates(data, trained, residual_norm(model, tokenizer, data.train, profile.layer))


def evaluate_task(model: nn.Module, tokenizer: Tokenizer, profile: Profile, task: str, *, tolerance: float = 1.0,
                  generate: bool = True, judge: Judge | None = None, sample: bool = True,
                  training_seed: int | None = None) -> TaskEvaluation:
    """Chapter 5's whole evaluation for one task: train every method and form (cached; at
    `training_seed` if given), sweep m >= 0 on both splits, choose each update's m on the training
    split, read the test split there; then generate at the chosen m on the profile's first
    `evaluation_questions` test questions and, with a judge, score the generations
    (`judge.judge_generations`). The split and the bootstrap always keep the profile's seed."""
    from .generations import evaluation_generations
    from .judge import judge_generations

    prepared = task_updates(model, tokenizer, profile, task, training_seed)
    data, trained = prepared.data, prepared.trained
    sweeps = prepared.sweeps(model, tokenizer, profile, negative=False)
    summary = summarise(sweeps, by=("method", "form", "split", "m"), seed=profile.seed)
    chosen = choose_multipliers(summary, trained, tolerance=tolerance)
    result = TaskEvaluation(task, data, summary, chosen, at_chosen(summary, chosen, split="test"))
    if generate or judge is not None:
        updates = {"unsteered": (None, 0.0), **{update_name(key): (trained[key], m) for key, m in chosen.items()}}
        questions = data.test[: profile.evaluation_questions]
        result.generations = evaluation_generations(model, tokenizer, questions, updates,
                                                    max_new_tokens=profile.generation_tokens, sample=sample,
                                                    seed=profile.seed)
        if judge is not None:
            result.judged = judge_generations(result.generations, task, judge)
    return result


def table3(evaluations: Mapping[str, TaskEvaluation]) -> pd.DataFrame:
    """One row per update (the unsteered model first), in the layout of the paper's Table 3: per
    task the chosen m, the share of test pairs preferring A_p (Psychopathy's accuracy) with its interval and,
    where a judge scored the generations, its mean scores and how many were missing."""
    if not evaluations:
        raise ValueError("no task evaluations: pass {task: evaluate_task(...)}")
    columns: dict[str, pd.Series] = {}
    for task, evaluation in evaluations.items():
        table = _by_update(evaluation.table)
        columns[f"{task} m"] = table["m"]
        for end in ("", "_low", "_high"):
            columns[f"{task} A_p share{end}"] = table[f"accuracy{end}"]
        scores = evaluation.scores
        if scores is not None:
            scores = scores.set_index("update")
            for name in JUDGE_COLUMNS.get(task, ()):
                columns[f"{task} {name}"] = scores[name]
                columns[f"{task} {name} missing"] = scores[f"{name}_missing"]
    return pd.DataFrame(columns).rename_axis("update").reset_index()


def prompt_tokens(tokenizer: Tokenizer, pairs: Sequence[PolarityPair]) -> float:
    """The mean number of prompt tokens (question in the chat template) over `pairs`: what a
    task's sweeps and training pay for on every pair, beside the answers."""
    from .scoring import chat_prompt

    if not pairs:
        raise ValueError("prompt_tokens needs at least one pair")
    return sum(len(tokenizer(chat_prompt(tokenizer, pair.question), add_special_tokens=False).input_ids)
               for pair in pairs) / len(pairs)


def task_verdicts(evaluations: Mapping[str, TaskEvaluation], tolerance: float = 1.0, split: str = "test") -> str:
    """`verdict_sentence` for each evaluated task, read at matched utility on `split`:
    "on axbench, SPLIT ties in vector, ..."."""
    return "; ".join(f"on {task}, " + verdict_sentence(split_verdicts(frontier_reach(e.summary, tolerance, split)))
                     for task, e in evaluations.items())


def tasks_left_out(profile: Profile) -> list[str]:
    """The tasks the profile does not train, sweep or evaluate (`Profile.evaluation_tasks`)."""
    from .data import TASKS

    return [task for task in TASKS if task not in profile.evaluation_tasks]


def left_out_note(model: nn.Module, tokenizer: Tokenizer, profile: Profile) -> str:
    """Which tasks the profile leaves out of chapter 5's evaluation (`Profile.evaluation_tasks`),
    and what they would cost: their mean prompt length against Psychopathy's."""
    from .data import load_task

    left_out = tasks_left_out(profile)
    if not left_out:
        return "every task is evaluated on this profile"
    length = {task: prompt_tokens(tokenizer, load_task(task, profile, model, tokenizer).train)
              for task in ("psychopathy", *left_out)}
    return "; ".join(
        f"{task} is left out on this profile: its prompts average {length[task]:.0f} tokens against "
        f"psychopathy's {length['psychopathy']:.0f}, and training and sweeping its updates on every pair "
        "would take longer than the book's whole time budget for this profile (the evaluation_tasks "
        "of a profile file name the tasks to evaluate)" for task in left_out)


def judge_agreement(evaluation: TaskEvaluation) -> Agreement | None:
    """Does the judge see what the log-odds measure? Spearman's rho across updates between the
    judge's mean score (AxBench: concept; PowerSeeking: its 0–4 rating) and the mean test PrefOdds
    at each update's chosen m; None where no judge scored the task."""
    from .judge import agreement

    scores = evaluation.scores
    if scores is None or evaluation.task not in JUDGE_COLUMNS:
        return None
    score = scores.set_index("update")[JUDGE_COLUMNS[evaluation.task][0]]
    return agreement(score, _by_update(evaluation.table).pref_odds)
