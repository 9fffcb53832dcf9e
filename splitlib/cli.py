"""The command line, `splitlib` (or `python -m splitlib`): thin wrappers over the calls the chapters make.

    splitlib profiles                         the built-in profiles
    splitlib profiles show NAME|FILE          one profile's every field, as a profile file
    splitlib chapter NAME [--profile P]       execute one chapter as `make book` does, cell by cell
    splitlib train --task T --method M --form F          train one intervention (or read it from the cache)
    splitlib sweep --task T --method M --form F --out F  sweep it over its evaluation grid, to CSV or parquet
    splitlib fit FILE                         fit the preference and utility curves of a sweep file

Every command takes --profile (a built-in name or a .toml profile file; default $SPLITLIB_PROFILE,
else cpu). A problem the user can fix (a bad profile, a missing device, data or model) is one
message on stderr and exit status 2, not a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import TASKS, DataError
from .interventions import FORMS
from .profiles import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    PROFILES,
    DeviceError,
    Profile,
    ProfileError,
    get_profile,
    is_profile_file,
    profile_path,
    profile_toml,
)
from .train import METHODS

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from .data import TaskData
    from .interventions import Intervention
    from .scoring import Tokenizer


class UsageError(ValueError):
    """A command line that names nothing that exists (a chapter, say)."""


# ----- profiles -----------------------------------------------------------------------------------------
def profiles_command(args: argparse.Namespace) -> int:
    """List the built-in profiles, or print one profile's every field as a profile file."""
    if args.action == "show":
        print(profile_toml(get_profile(args.profile_name)), end="")
        return 0
    for name, profile in PROFILES.items():
        print(f"{name:15} {profile.model:32} layer {profile.layer:<3} {profile.dtype:9} {profile.device:5} "
              f"{profile.description}")
    print("\nAny of them, or a .toml profile file that inherits one, goes in $SPLITLIB_PROFILE or --profile; "
          "`splitlib profiles show NAME` prints every field.")
    return 0


# ----- chapters -----------------------------------------------------------------------------------------
def chapter_command(args: argparse.Namespace) -> int:
    """Execute one chapter into the notebook `make book` would write (or into --out), stamped the
    same way, so `python -m splitlib.build html` picks it up."""
    from . import build

    profile = get_profile(args.profile)
    chapter = find_chapter(args.name)
    build.preflight(profile)  # the device first, then the data
    target = (Path(args.out) if args.out else build.notebook_dir(profile)) / f"{chapter.stem}.ipynb"
    if not build.prepare_chapter(chapter, profile, target, force=args.force):
        print(f"{chapter.stem} is up to date for profile {profile.name!r}: {target} (--force runs it again)")
        return 0
    print(f"executing {chapter.stem} with profile {profile.name!r} (at most {profile.cell_timeout} s a cell)")
    started = time.perf_counter()
    if not execute_notebook(target, profile.cell_timeout, kernel_env(args.profile)):
        print(f"{chapter.stem} failed; the notebook with the error is {target}", file=sys.stderr)
        return 1
    build.record_notebook(target)
    print(f"{chapter.stem} executed in {time.perf_counter() - started:.0f} s: {target}")
    return 0


def find_chapter(name: str) -> Path:
    """The chapter named by its file stem, its file name or a prefix of one chapter's stem ("01")."""
    from .build import chapters

    found = chapters()
    matches = [c for c in found if name in (c.stem, c.name)] or [c for c in found if c.stem.startswith(name)]
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else 'more than one'} chapter matches {name!r}; "
                         f"the chapters are {', '.join(c.stem for c in found)}")
    return matches[0]


def kernel_env(spec: str | None) -> dict[str, str]:
    """The environment of a chapter's kernel, as the Makefile sets it: the profile (a file's path
    made absolute, since the kernel runs in the notebook's folder) and a fixed hash seed."""
    chosen = spec or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if is_profile_file(chosen):
        chosen = str(profile_path(chosen))
    return {**os.environ, PROFILE_ENV: chosen, "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}


def execute_notebook(target: Path, timeout: int, env: dict[str, str]) -> bool:
    """Run every cell of the notebook at `target` in a fresh kernel in its folder, echoing what the
    kernel prints (progress bars) and one line per cell; write it back, outputs and errors included.
    False if a cell failed."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(target, as_version=4)
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and cell.source.strip()]
    started: dict[int, float] = {}

    def on_start(cell_index: int, **_: Any) -> None:  # nbclient passes hooks keywords
        if cell_index in code:
            started[cell_index] = time.perf_counter()
            print(f"cell {code.index(cell_index) + 1}/{len(code)} …", flush=True)

    def on_executed(cell_index: int, **_: Any) -> None:
        seconds = time.perf_counter() - started.get(cell_index, time.perf_counter())
        print(f"cell {code.index(cell_index) + 1}/{len(code)} done in {seconds:.1f} s", flush=True)

    client = _echoing_client()(notebook, timeout=timeout, resources={"metadata": {"path": str(target.parent)}},
                               on_cell_start=on_start, on_cell_executed=on_executed)
    try:
        client.execute(env=env)
        return True
    except CellExecutionError as error:
        print(error, file=sys.stderr)
        return False
    finally:
        nbformat.write(notebook, target)


def _echoing_client() -> type:
    from nbclient import NotebookClient

    class EchoingClient(NotebookClient):
        """A NotebookClient that also prints the kernel's stdout and stderr as they arrive."""

        def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int) -> Any:
            if msg["msg_type"] == "stream":
                stream = sys.stderr if msg["content"].get("name") == "stderr" else sys.stdout
                stream.write(msg["content"].get("text", ""))
                stream.flush()
            return super().output(outs, msg, display_id, cell_index)

    return EchoingClient


# ----- train, sweep, fit --------------------------------------------------------------------------------
def train_command(args: argparse.Namespace) -> int:
    """Train one intervention as the chapters do (or read it from the cache) and say where it is."""
    profile, model, tokenizer, data = _task_setup(args)
    intervention = trained(args, profile, model, tokenizer, data)
    print(f"{args.method} {args.form} on {data.describe()}: {intervention}")
    folder = cached_folder(intervention)
    print(f"in the cache at {folder}" if folder else "not found in the cache (is $SPLITLIB_CACHE read-only?)")
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    """Sweep a trained intervention over its evaluation grid (or --multipliers) on one split and
    write the per-pair table (the chapters' run_sweep, so the cached sweep is shared)."""
    from .sweep import run_sweep
    from .train import evaluation_grid, residual_norm

    profile, model, tokenizer, data = _task_setup(args)
    intervention = trained(args, profile, model, tokenizer, data)
    if args.multipliers:
        grid = args.multipliers
    else:
        unit = residual_norm(model, tokenizer, data.train, profile.layer) if args.method == "diffmean" else 1.0
        grid = evaluation_grid(profile, args.method, args.form, intervention, unit)
    table = run_sweep(model, tokenizer, getattr(data, args.split), intervention, grid, split=args.split,
                      loss=args.loss, max_answer_tokens=profile.max_answer_tokens, settings=profile.engine)
    table = table.assign(task=args.task, method=args.method, form=args.form, loss=args.loss, profile=profile.name)
    write_table(table, args.out)
    print(f"{len(table)} rows ({len(grid)} multipliers x {len(table) // len(grid)} pairs) in {args.out}")
    return 0


def fit_command(args: argparse.Namespace) -> int:
    """Fit the preference and utility curves (Eqs. 15, 17) to the mean over pairs of each curve in a
    sweep file, as chapter 4 does, and print their parameters, R² and the regions they imply."""
    from .fit import fit_preference, fit_utility

    table = read_table(args.file)
    by = [column for column in ("task", "method", "form", "split", "loss") if column in table.columns]
    means = table.groupby([*by, "m"], sort=True)[["pref_odds", "util_odds"]].mean().reset_index()
    for keys, curve in means.groupby(by, sort=False) if by else [((), means)]:
        label = ", ".join(f"{k}={v}" for k, v in zip(by, keys if isinstance(keys, tuple) else (keys,)))
        for kind, fitter, column in (("preference", fit_preference, "pref_odds"),
                                     ("utility", fit_utility, "util_odds")):
            fitted = fitter(curve.m.to_numpy(), curve[column].to_numpy(), seed=args.seed)
            status = f"R² {fitted.r2:.4f}" if fitted.ok else f"flagged: {fitted.flag}"
            print(f"{kind} ({label or 'all rows'}; {len(curve)} multipliers): {status}")
            for warning in fitted.warnings if fitted.ok else []:  # the curve leaves its data between points
                print(f"  flagged shape: {warning}")
            print("  " + ", ".join(f"{name} = {value:.6g}" for name, value in fitted.params.items()))
            if fitted.derived:
                beyond = fitted.extrapolated
                print("  " + ", ".join(f"{name} = {value:.4g}" + (" (beyond the grid)" if beyond.get(name) else "")
                                       for name, value in fitted.derived.items()))
    return 0


def export_command(args: argparse.Namespace) -> int:
    """The intervention `train` makes (cached), written for another tool by `interop.export`."""
    from .interop import export

    profile, model, tokenizer, data = _task_setup(args)
    intervention = trained(args, profile, model, tokenizer, data)
    written = export(intervention, args.format, args.out, model, multiplier=args.multiplier, tokenizer=tokenizer)
    print(f"{args.method} {args.form} (layer {intervention.layer}) as {args.format}: {written}")
    return 0


def _task_setup(args: argparse.Namespace) -> tuple[Profile, nn.Module, Tokenizer, TaskData]:
    """The profile (its device checked first), its model and the task's split, as a chapter loads them."""
    from .data import load_task
    from .models import check_profile_device, load_model

    profile = check_profile_device(get_profile(args.profile))
    model, tokenizer = load_model(profile)
    return profile, model, tokenizer, load_task(args.task, profile, model, tokenizer)


def trained(args: argparse.Namespace, profile: Profile, model: nn.Module, tokenizer: Tokenizer,
            data: TaskData) -> Intervention:
    """The intervention `train_all` trains for this method and form: the same call, so the same cache entry."""
    from .train import config_for, train_for_profile

    config = None if args.method == "diffmean" else config_for(profile, args.task, args.method, args.form)
    return train_for_profile(model, tokenizer, data.train, args.method, args.form, config, profile)


def cached_folder(intervention: Intervention) -> Path | None:
    """The cache folder that holds `intervention` (train_intervention keys it but returns the loaded
    update): the newest whose saved provenance, loss history included, and tensors match it."""
    import torch
    from safetensors.torch import load_file

    from .cache import cache_root

    saved = sorted((cache_root() / "interventions").glob("*/intervention.json"),
                   key=lambda path: path.stat().st_mtime, reverse=True)
    state = {name: tensor.cpu() for name, tensor in intervention.state_dict().items()}
    for meta in saved:
        if json.loads(meta.read_text()).get("provenance") != getattr(intervention, "provenance", None):
            continue
        tensors = load_file(meta.parent / "intervention.safetensors")
        if tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state):
            return meta.parent
    return None


def write_table(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)


def read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    missing = {"m", "pref_odds", "util_odds"} - set(table.columns)
    if missing:
        raise DataError(f"{path} is not a sweep table: it has no {', '.join(sorted(missing))} column")
    return table


# ----- the parser ---------------------------------------------------------------------------------------
def _table_path(text: str) -> Path:
    if not text.endswith((".csv", ".parquet")):
        raise argparse.ArgumentTypeError(f"a sweep table is a .csv or a .parquet file, not {text!r}")
    return Path(text)


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="splitlib", description=__doc__.split("\n\n")[0])
    commands = main_parser.add_subparsers(dest="command", required=True)
    profile_option = argparse.ArgumentParser(add_help=False)
    profile_option.add_argument("--profile", help="a built-in name or a .toml file (default $SPLITLIB_PROFILE, "
                                                  "else cpu)")
    task_options = argparse.ArgumentParser(add_help=False, parents=[profile_option])
    task_options.add_argument("--task", choices=TASKS, required=True)
    task_options.add_argument("--method", choices=METHODS, default="split")
    task_options.add_argument("--form", choices=FORMS, default="vector")

    profiles = commands.add_parser("profiles", help="list the built-in profiles, or show one")
    profiles.set_defaults(run=profiles_command, action="list")
    shown = profiles.add_subparsers(dest="action").add_parser("show", help="every field of one profile, as TOML")
    shown.add_argument("profile_name", metavar="NAME|FILE")

    chapter = commands.add_parser("chapter", parents=[profile_option], help="execute one chapter")
    chapter.add_argument("name", help="e.g. 01-unified-view, or a unique prefix such as 01")
    chapter.add_argument("--out", help="folder for the executed notebook (default: where `make book` puts it)")
    chapter.add_argument("--force", action="store_true", help="run it even if it is up to date")
    chapter.set_defaults(run=chapter_command)

    commands.add_parser("train", parents=[task_options], help="train one intervention").set_defaults(
        run=train_command)

    sweep = commands.add_parser("sweep", parents=[task_options], help="sweep a trained intervention over m")
    sweep.add_argument("--split", choices=("train", "test"), default="test")
    sweep.add_argument("--multipliers", type=_floats,
                       help="e.g. --multipliers=-4,-2,0,2,4 (default: the evaluation grid)")
    sweep.add_argument("--loss", choices=("sum", "mean"), default="sum", help="as the chapters' evaluation sweeps")
    sweep.add_argument("--out", type=_table_path, required=True, help="a .csv or .parquet file")
    sweep.set_defaults(run=sweep_command)

    fit = commands.add_parser("fit", help="fit preference and utility curves to a sweep file")
    fit.add_argument("file", type=_table_path, help="a .csv or .parquet file from `splitlib sweep`")
    fit.add_argument("--seed", type=int, default=PROFILES[DEFAULT_PROFILE].seed, help="of the fits' restarts")
    fit.set_defaults(run=fit_command)
    from .interop import EXPORT_FORMATS

    export = commands.add_parser("export", parents=[task_options], help="write a trained intervention for "
                                 "another tool: a llama.cpp control vector, a peft adapter, a merged checkpoint")
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    export.add_argument("--out", type=Path, required=True, help="the file (gguf) or folder to write")
    export.add_argument("--multiplier", type=float, default=1.0, help="scales a gguf vector or a merged update")
    export.set_defaults(run=export_command)
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ProfileError, DeviceError, DataError, OSError) as error:  # OSError: missing data or model, I/O
        print(f"splitlib: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitlib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
