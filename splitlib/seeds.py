"""How far the book's conclusions move when only the training seed changes.

The seed fixes an update's dropout, LoRA's initial A, the order of the examples and the size of m drawn
for each. Here every method and form is trained again with other seeds on the same training split,
swept on both splits, its m chosen on the training split by the book's rule, and chapter 5's
conclusions recomputed (`evaluation.conclusions`, `evaluation.ablation_conclusions`), with
chapter 4's verdict under each rule for m (`evaluation.rule_conclusions`); the data, its split and
the bootstrap keep the profile's seed. `python -m splitlib.seeds` runs it and writes the record
chapters 4 and 5 show (`SEED_RECORD`), as `splitlib.search` writes its own.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .cache import write_atomically
from .checks import check_int, check_unique
from .evaluation import (
    ablation,
    ablation_conclusions,
    conclusions,
    evaluate_task,
    knob_variants,
    rule_comparison,
    rule_conclusions,
    rule_verdicts,
    task_updates,
)
from .profiles import Profile, check_profile
from .scoring import Tokenizer

SEED_RECORD = Path(__file__).resolve().parent / "records" / "cpu-seed-study.json"
TABLE_COLUMNS = ("method", "form", "m", "accuracy", "pref_odds", "util_odds")


def seed_conclusions(model: nn.Module, tokenizer: Tokenizer, profile: Profile, task: str, seed: int,
                     tolerance: float = 1.0) -> tuple[dict[str, str], pd.DataFrame]:
    """Chapter 5's conclusions on `task` with every update trained at `seed` (cached;
    `evaluation.evaluate_task`, without generating) and its ablation of SPLIT LoRA's knobs at that
    update's m (`evaluation.ablation_conclusions`), chapter 4's verdict under each rule for m
    (`evaluation.rule_conclusions`, from fits of both signs of m), and the test-split table at the
    chosen m."""
    from .regions import fit_curves, mean_curves
    from .train import config_for

    check_profile(profile)
    check_int("seed", seed)
    result = evaluate_task(model, tokenizer, profile, task, tolerance=tolerance, generate=False, training_seed=seed)
    updates = task_updates(model, tokenizer, profile, task, seed)  # the same updates, from the cache
    fits = fit_curves(mean_curves(updates.sweeps(model, tokenizer, profile)), seed=profile.seed)
    comparison = rule_comparison(model, tokenizer, updates.data.test, updates.trained, result.summary, fits,
                                 profile, tolerance)
    variants = knob_variants(config_for(profile, task, "split", "lora"))
    ablated = ablation(model, tokenizer, updates.data.train, updates.data.test, profile, variants,
                       result.chosen[("split", "lora")], training_seed=seed)
    found = {**conclusions(result.summary, result.chosen, tolerance), **rule_conclusions(rule_verdicts(comparison)),
             **ablation_conclusions(ablated)}
    return found, result.table


def seed_record(model: nn.Module, tokenizer: Tokenizer, profile: Profile, task: str, seeds: Sequence[int],
                tolerance: float = 1.0) -> dict:
    """What `python -m splitlib.seeds` writes: each seed's conclusions and table, and how they were made."""
    from .provenance import code_version

    check_unique("seeds", seeds)
    if not seeds:
        raise ValueError("seeds is empty: give the training seeds to compare")
    started, rows = time.perf_counter(), []
    for seed in seeds:
        found, table = seed_conclusions(model, tokenizer, profile, task, seed, tolerance)
        rows.append({"seed": seed, "conclusions": found,
                     "table": table[list(TABLE_COLUMNS)].to_dict(orient="records")})
    return {"profile": profile.name, "task": task, "tolerance": tolerance, "profile_seed": profile.seed,
            # the wall time of this run: artifacts an earlier run left in the cache cost it nothing
            "seeds": rows, "seconds": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(), "code": code_version()}


def read_seed_record(path: str | Path | None = None) -> dict:
    """A record written by `python -m splitlib.seeds` (by default the cpu profile's, shipped in the
    package), with its conclusions as a table under "table": one row per conclusion, one column
    per training seed ("seed 42", ...)."""
    path = SEED_RECORD if path is None else Path(path)
    record = json.loads(path.read_text())
    missing = [key for key in ("seeds", "task", "profile_seed") if key not in record]
    if missing:
        raise ValueError(f"{path} is not a seed record: it lacks {', '.join(missing)}")
    table = pd.DataFrame({f"seed {row['seed']}": row["conclusions"] for row in record["seeds"]})
    return {**record, "table": table.rename_axis("conclusion").reset_index()}


def held_in_every_seed(table: pd.DataFrame) -> dict[str, str]:
    """The conclusions (rows of `read_seed_record`'s table) that read the same for every seed, with
    what they read."""
    same = table.drop(columns="conclusion").nunique(axis=1) == 1
    return dict(zip(table.conclusion[same], table[same].iloc[:, 1]))


def by_seed(table: pd.DataFrame, names: Iterable[str]) -> str:
    """The named conclusions of `read_seed_record`'s table in words, the seeds grouped by what each
    reads: "a: in 3 of 3 forms with seeds 42 and 44, in 2 of 3 forms with seed 43"."""
    rows = table.set_index("conclusion")
    parts = []
    for name in names:
        if name not in rows.index:
            raise KeyError(f"the seed record has no conclusion {name!r}: run `python -m splitlib.seeds` again")
        seeds_by_value: dict[str, list[str]] = {}
        for column, value in rows.loc[name].items():
            seeds_by_value.setdefault(value, []).append(str(column).removeprefix("seed "))
        parts.append(f"{name}: " + ", ".join(f"{value} with seed{'s' if len(seeds) > 1 else ''} {_and(seeds)}"
                                             for value, seeds in seeds_by_value.items()))
    return "; ".join(parts)


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def record_check(record: dict, own: dict[str, str], profile: Profile) -> str:
    """Whether the record's column for the page's seed reads as the conclusions the page computed
    itself (`own`: chapter 5's `evaluation.conclusions`, chapter 4's `evaluation.rule_conclusions`),
    in words: a record written by other code says so here."""
    if record["profile"] != profile.name:
        return (f"is not compared with this page's conclusions: the record is the {record['profile']} profile's "
                f"and this page runs the {profile.name} profile")
    row = next((r["conclusions"] for r in record["seeds"] if r["seed"] == profile.seed), None)
    if row is None:
        return f"is missing: the record has no run at this page's seed, {profile.seed}"
    differ = [name for name in own if row.get(name) != own[name]]  # a page compares what it computes
    if not differ:
        return "reads as this page's own conclusions do, one for one"
    return (f"differs from this page's own conclusions in {', '.join(differ)}: the record was written by "
            f"{record.get('code', 'code it does not name')}, so run `python -m splitlib.seeds` again")


def main(argv: Sequence[str] | None = None) -> int:
    """Train every update again with each seed and write chapter 5's conclusions per seed."""
    import argparse

    from .models import load_model
    from .profiles import get_profile

    parser = argparse.ArgumentParser(prog="python -m splitlib.seeds", description=main.__doc__)
    parser.add_argument("--profile", default=None, help="a built-in profile or a profile file (default: cpu)")
    parser.add_argument("--task", default="psychopathy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, default=SEED_RECORD)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    model, tokenizer = load_model(profile)
    record = seed_record(model, tokenizer, profile, args.task, args.seeds)
    write_atomically(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(read_seed_record(args.out)["table"].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
