"""Training hyperparameters chosen on the training split alone.

A small grid of learning rates, epochs and batch sizes per form: each candidate trains a method
(SPLIT unless `--method sft` or `reps`) on two thirds of the training split and is read on the
held-out third at the m the book's rule picks there (`scoring.choose_multiplier`). The test split
is never an argument, so it cannot be read. `python -m splitlib.search` runs it for a profile and
writes the record the cpu profile's configs come from (`profiles.search_record_path`: SPLIT's
gives `split_configs`, SFT's and RePS's `method_schedules`); chapter 5 shows the records.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .cache import write_atomically
from .checks import check_int, check_number
from .data import PolarityPair, check_pairs
from .interventions import check_form
from .profiles import SEARCH_RECORD, SEARCHED_METHODS, Profile, TrainConfig, check_profile, search_record_path
from .scoring import Tokenizer, choose_multiplier, summarise
from .sweep import run_sweep
from .train import config_for, evaluation_multipliers, train_for_profile

CANDIDATE_COLUMNS = ("form", "lr", "epochs", "batch_size", "m", "accuracy", "pref_odds", "util_odds",
                     "unsteered_util_odds", "seconds")


@dataclass(frozen=True)
class SearchSpace:
    """The candidates per form: every learning rate of the form with every (epochs, batch size)
    schedule. A schedule's cost is its epochs (a step's cost grows with its batch)."""

    learning_rates: Mapping[str, tuple[float, ...]]
    schedules: tuple[tuple[int, int], ...]  # (epochs, batch_size)

    def restricted(self, forms: Sequence[str]) -> SearchSpace:
        """The same space for `forms` only."""
        missing = [form for form in forms if form not in self.learning_rates]
        if missing:
            raise ValueError(f"the search space has no learning rates for {', '.join(missing)} "
                             f"(it has {', '.join(self.learning_rates)})")
        return SearchSpace({form: self.learning_rates[form] for form in forms}, self.schedules)

    def __post_init__(self) -> None:
        for form, rates in self.learning_rates.items():
            check_form(form)
            if not rates:
                raise ValueError(f"SearchSpace.learning_rates[{form!r}] is empty")
            for lr in rates:
                check_number(f"SearchSpace.learning_rates[{form!r}] entry", lr, 0, open_low=True)
        if not self.schedules:
            raise ValueError("SearchSpace.schedules is empty: give (epochs, batch_size) pairs")
        for epochs, batch in self.schedules:
            check_int("SearchSpace epochs", epochs, low=1)
            check_int("SearchSpace batch_size", batch, low=1)


# The cpu profile's space: its former rates and 3x and 10x them, then one more ~3x step past each
# edge that a method's choice sat on (LoRA 0.3; local weight 0.0006 and 0.06, then 0.0002, where
# RePS chose 0.0006); 2 or 4 epochs, batches of 8 or 4.
CPU_SPACE = SearchSpace(
    learning_rates={"vector": (0.01, 0.03, 0.1), "lora": (0.01, 0.03, 0.1, 0.3),
                    "local_weight": (0.0002, 0.0006, 0.002, 0.006, 0.02, 0.06)},
    schedules=((2, 8), (2, 4), (4, 4)),
)


def validation_split(pairs: Sequence[PolarityPair], held_out: float = 1 / 3, seed: int = 0
                     ) -> tuple[list[PolarityPair], list[PolarityPair]]:
    """The training split cut in two by question, reproducibly, so that no question is on both
    sides: (pairs to train on, about `held_out` of them to validate on)."""
    check_pairs(pairs, "training split")
    check_number("held_out", held_out, 0, 1, open_low=True, open_high=True)
    groups = sorted({pair.group for pair in pairs})
    if len(groups) < 2:
        raise ValueError(f"a training split of {len(pairs)} pairs on {len(groups)} question(s) cannot be cut in two")
    random.Random(seed).shuffle(groups)
    validation_groups: set[str] = set()
    for group in groups[:-1]:  # at least one question stays to train on
        if sum(pair.group in validation_groups for pair in pairs) >= held_out * len(pairs):
            break
        validation_groups.add(group)
    return ([pair for pair in pairs if pair.group not in validation_groups],
            [pair for pair in pairs if pair.group in validation_groups])


def candidates(base: TrainConfig, form: str, space: SearchSpace) -> list[TrainConfig]:
    """`base` with each learning rate and schedule of `space` for `form`."""
    if form not in space.learning_rates:
        raise ValueError(f"the search space has no learning rates for the {form} form "
                         f"(it has {sorted(space.learning_rates)})")
    return [dataclasses.replace(base, lr=lr, epochs=epochs, batch_size=batch, grad_accum=1)
            for lr in space.learning_rates[form] for epochs, batch in space.schedules]


def search_training(model: nn.Module, tokenizer: Tokenizer, train: Sequence[PolarityPair], profile: Profile,
                    task: str, space: SearchSpace, *, method: str = "split",
                    tolerance: float = 1.0, progress: bool = True, done: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every candidate of `space` for each form it names, trained (cached) on part of the *training* split
    and read on the rest at the m the book's rule picks there: one row per candidate. Rows of `done`
    (an earlier record's table) are kept as they are, with their seconds, not run again."""
    check_profile(profile)
    fit_pairs, validation = validation_split(train, seed=profile.seed)
    earlier = {} if done is None else {(row["form"], row["lr"], row["epochs"], row["batch_size"]): row
                                       for row in done.to_dict(orient="records")}
    rows = []
    for form in space.learning_rates:
        for config in candidates(config_for(profile, task, method, form), form, space):
            key = (form, config.lr, config.epochs, config.batch_size)
            if key in earlier:
                rows.append(earlier[key])
                continue
            started = time.perf_counter()
            update = train_for_profile(model, tokenizer, fit_pairs, method, form, config, profile, progress)
            grid = [0.0, *evaluation_multipliers(profile, method, form, update, 1.0)]
            sweep = run_sweep(model, tokenizer, validation, update, sorted(set(grid)), split="validation",
                              loss="sum", max_answer_tokens=profile.max_answer_tokens, settings=profile.engine,
                              progress=progress)
            summary = summarise(sweep, by=("m",), seed=profile.seed)
            m = choose_multiplier(summary, tolerance=tolerance)
            at, unsteered = summary[summary.m == m].iloc[0], summary[summary.m == 0].iloc[0]
            rows.append({"form": form, "lr": config.lr, "epochs": config.epochs, "batch_size": config.batch_size,
                         "m": m, "accuracy": float(at.accuracy), "pref_odds": float(at.pref_odds),
                         "util_odds": float(at.util_odds), "unsteered_util_odds": float(unsteered.util_odds),
                         "seconds": time.perf_counter() - started})
    return pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))


def choose_candidates(table: pd.DataFrame, validation_pairs: int) -> pd.DataFrame:
    """Per form, the candidate with the highest validation accuracy; candidates within one of the
    `validation_pairs` of it count as tied, and the cheapest of those wins (fewest epochs; among
    equally cheap ones the highest accuracy, then PrefOdds): the time budget is part of the choice,
    but a tie never trades accuracy for nothing."""
    if table.empty:
        raise ValueError("no search results to choose from")
    check_int("validation_pairs", validation_pairs, low=1)
    chosen = []
    for _, group in table.groupby("form", sort=False):
        tied = group[group.accuracy >= group.accuracy.max() - 1 / validation_pairs - 1e-9]
        chosen.append(tied.sort_values(["epochs", "accuracy", "pref_odds"], ascending=[True, False, False]).iloc[0])
    return pd.DataFrame(chosen).reset_index(drop=True)


def search_record(table: pd.DataFrame, profile: Profile, task: str, space: SearchSpace, held_out: int,
                  seconds: float, method: str = "split") -> dict:
    """What `python -m splitlib.search` writes: the candidates, the choice per form and how it was made."""
    from .provenance import code_version

    chosen = choose_candidates(table, held_out)
    return {
        "profile": profile.name, "task": task, "method": method, "validation_pairs": held_out,
        "rule": "highest validation accuracy at the m scoring.choose_multiplier picks on the validation pairs; "
                "within one validation pair of it, the fewest epochs, then the highest accuracy, then PrefOdds",
        "space": {"learning_rates": {k: list(v) for k, v in space.learning_rates.items()},
                  "schedules": [list(s) for s in space.schedules]},
        "candidates": table.to_dict(orient="records"),
        "chosen": {row.form: {"lr": float(row.lr), "epochs": int(row.epochs), "batch_size": int(row.batch_size)}
                   for row in chosen.itertuples()},
        "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "code": code_version(),
    }


def read_record(path: str | Path | None = None) -> dict:
    """A search record written by `python -m splitlib.search` (its candidates as a table under
    "table"); by default the cpu profile's, shipped in the package (`profiles.SEARCH_RECORD`)."""
    path = SEARCH_RECORD if path is None else path
    record = json.loads(Path(path).read_text())
    missing = [key for key in ("candidates", "chosen", "validation_pairs") if key not in record]
    if missing:
        raise ValueError(f"{path} is not a search record: it lacks {', '.join(missing)}")
    return {**record, "table": pd.DataFrame(record["candidates"], columns=list(CANDIDATE_COLUMNS))}


def extendable_record(path: str | Path, profile: Profile, task: str, method: str, validation_pairs: int) -> dict:
    """The record at `path` (`read_record`), if a search of the same profile, task, method and
    validation split made it; else a ValueError naming what differs (its rows would not compare)."""
    if not Path(path).exists():
        raise ValueError(f"--extend: there is no record at {path} to extend")
    record = read_record(path)
    wanted = {"profile": profile.name, "task": task, "method": method, "validation_pairs": validation_pairs}
    differ = [f"{key} {record.get(key)!r} (this search: {value!r})" for key, value in wanted.items()
              if record.get(key) != value]
    if differ:
        raise ValueError(f"--extend: the record at {path} comes from another search: {'; '.join(differ)}")
    return record


def choices_inside(records: Sequence[Mapping]) -> tuple[int, int]:
    """How many of the records' chosen learning rates lie strictly inside their form's grid (a
    choice on an edge says the grid may end too early), out of how many choices."""
    inside = [min(rates) < chosen["lr"] < max(rates) for record in records
              for form, chosen in record["chosen"].items()
              for rates in [record["space"]["learning_rates"][form]]]
    return sum(inside), len(inside)


def threads_note(records: Sequence[Mapping]) -> str:
    """The threads the records' searches ran on, in words ("1 thread each"): their seconds are wall
    times, which read differently on one thread than on several."""
    threads = {record.get("threads") for record in records}
    given = next(iter(threads)) if len(threads) == 1 else None
    if given is None:
        return "threads the records do not all give"
    n = int(given)
    return f"{n} thread{'s' if n > 1 else ''} each"


def read_records() -> list[dict]:
    """Every search record the cpu profile ships (`read_record`), SPLIT's first, then those of the
    methods a search tuned on their own (`profiles.SEARCHED_METHODS`)."""
    return [read_record(path) for path in map(search_record_path, SEARCHED_METHODS) if path.exists()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the profile's search on a task's training split and write its record."""
    import argparse

    from .data import load_task
    from .models import load_model
    from .profiles import get_profile

    parser = argparse.ArgumentParser(prog="python -m splitlib.search", description=main.__doc__)
    parser.add_argument("--profile", default=None, help="a built-in profile or a profile file (default: cpu)")
    parser.add_argument("--task", default="psychopathy")
    parser.add_argument("--method", default="split", choices=SEARCHED_METHODS)
    parser.add_argument("--forms", nargs="+", default=None, help="the forms to search (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="default: the method's record in splitlib/records")
    parser.add_argument("--extend", action="store_true",
                        help="keep the candidates the record at --out already has; run only the new ones")
    args = parser.parse_args(argv)
    space = CPU_SPACE if args.forms is None else CPU_SPACE.restricted(args.forms)
    profile = get_profile(args.profile)
    args.out = search_record_path(args.method) if args.out is None else args.out
    model, tokenizer = load_model(profile)
    train = load_task(args.task, profile, model, tokenizer).train  # the test split is never passed on
    held_out = len(validation_split(train, seed=profile.seed)[1])
    earlier = extendable_record(args.out, profile, args.task, args.method, held_out) if args.extend else None
    dropped = [] if earlier is None else sorted(set(earlier["table"].form) - set(space.learning_rates))
    if dropped:
        parser.error(f"--extend would drop the record's {', '.join(dropped)} candidates: add them to --forms")
    started = time.perf_counter()
    table = search_training(model, tokenizer, train, profile, args.task, space, method=args.method,
                            done=None if earlier is None else earlier["table"])
    seconds = time.perf_counter() - started + (0.0 if earlier is None else earlier["seconds"])
    record = search_record(table, profile, args.task, space, held_out, seconds, args.method)
    if earlier is not None:
        record["extends"] = earlier.get("extends", earlier.get("code"))  # the code its first rows ran on
    write_atomically(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(choose_candidates(table, held_out).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
