"""What only the chapters need: the run box at the top of a page and tables in one style.

The computations live in the other modules; this one shapes their results for the page, so a
chapter shows the calls a reader would write and not the formatting around them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .profiles import EMBEDDED_MODEL, Profile, TrainConfig

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from .evaluation import TaskEvaluation
    from .geometry import ManifoldReference
    from .models import ModelInfo

# One number format for the book's tables, unless a column asks for another.
DEFAULT_FORMAT = "{:.3g}"
# Styler tables do not get the theme's dataframe styling: give their cells room and align them at the top.
CELL_STYLE = [{"selector": "th, td", "props": "padding: 0.25em 0.5em; vertical-align: top; text-align: left;"}]


def run_box(profile: Profile, model_info: ModelInfo, data: str) -> object:
    """The box at the top of every chapter: what rendered it and how to re-run it at paper scale.

    Returned as MyST Markdown, which the book renders as an admonition.
    """
    from IPython.display import Markdown

    if profile.paper_setup:
        scale = "the paper's setup"
    elif profile.model == EMBEDDED_MODEL:
        scale = "a small model at CI sizes: shapes, not magnitudes"
    else:
        scale = "the profile's own split sizes, not the paper's"
    return Markdown(
        "```{admonition} How this page was rendered\n"
        ":class: note\n\n"
        f"- **Profile:** `{profile.name}`: {profile.description}\n"
        f"- **Model:** `{profile.model}` ({model_info.architecture}, {model_info.n_layers} layers, "
        f"hidden size {model_info.hidden_size}, {model_info.n_parameters / 1e6:.1f} M parameters, "
        f"{model_info.dtype} on {model_info.device})\n"
        f"- **Intervention layer:** {profile.layer}\n"
        f"- **Data:** {data}\n"
        f"- **Scale:** {scale}\n\n"
        f"To re-run at paper scale: {profile.rerun_hint()}\n"
        "```"
    )


def table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> Styler:
    """`frame` for the page: no index column, numbers in the book's format (or the column's own
    from `formats`), text left as it is."""
    numeric = [c for c in frame.columns if frame[c].dtype.kind in "fc"]
    chosen = {column: DEFAULT_FORMAT for column in numeric} | dict(formats or {})
    return (frame.style.format({c: f for c, f in chosen.items() if c in frame.columns}).hide(axis="index")
            .set_table_styles(CELL_STYLE))


def with_intervals(frame: pd.DataFrame, formats: Mapping[str, str]) -> pd.DataFrame:
    """Each column named in `formats` written with its interval (the columns `<name>_low` and
    `<name>_high`, then dropped) in that format, as "+0.12 [+0.01, +0.20]"."""
    shown = frame.copy()
    for name, form in formats.items():
        bounds = [f"{name}_low", f"{name}_high"]
        missing = [column for column in (name, *bounds) if column not in frame.columns]
        if missing:
            raise ValueError(f"with_intervals: the table has no column {missing[0]!r} (it has {list(frame.columns)})")
        shown[name] = [f"{form.format(v)} [{form.format(low)}, {form.format(high)}]"
                       for v, low, high in zip(frame[name], frame[bounds[0]], frame[bounds[1]], strict=True)]
        shown = shown.drop(columns=bounds)
    return shown


def interval_table(frame: pd.DataFrame, value: str, index: list[str], columns: str,
                   labels: Mapping[str, str] | None = None, caption: str = "") -> Styler:
    """`value` with its interval (the columns `<value>_low`, `<value>_high`) written "+0.12
    [+0.01, +0.20]", one row per `index` and one column per value of `columns` (renamed by `labels`)."""
    shown = with_intervals(frame, {value: "{:+.2f}"})[value]
    wide = (frame.assign(shown=shown.to_numpy())
            .pivot_table(index=index, columns=columns, values="shown", aggfunc="first", sort=False)
            .rename(columns=dict(labels or {})).reset_index())
    wide.columns.name = None
    return table(wide).set_caption(caption)


def hyperparameter_table(configs: Mapping[tuple[str, str], TrainConfig]) -> Styler:
    """One row per (method, form) with the settings that differ between them; the settings all
    share are named once, in the caption, so the table fits the page."""
    import pandas as pd

    rows = pd.DataFrame([{"method": method, "form": form, **{k: _short(v) for k, v in vars(config).items()}}
                         for (method, form), config in configs.items()])
    settings = list(rows.columns[2:])
    varying = [name for name in settings if rows[name].nunique() > 1]
    shared = ", ".join(f"{name} = {rows[name].iloc[0]}" for name in settings if name not in varying)
    return table(rows[["method", "form", *varying]]).set_caption(f"The same for every row: {shared}.")


PAIR_TYPES_JOIN = "\u00a0+ "  # "add + sub" breaks only after the "+": two lines in a phone's column, not three


def pair_types_table(profile: Profile, trained: Sequence[tuple[str, str]]) -> Styler:
    """The pair types each trained (method, form) learns from on every task: they differ by task,
    and `hyperparameter_table` shows one task."""
    import pandas as pd

    from .data import TASKS, task_columns
    from .train import config_for

    heads = task_columns(TASKS)  # the paper's PSY, PWR, AXB: a narrow table on a phone
    rows = pd.DataFrame([{"method": method, "form": form,
                          **{heads[task]: PAIR_TYPES_JOIN.join(config_for(profile, task, method, form).pair_types)
                             for task in TASKS}}
                         for method, form in trained])
    return table(rows).set_caption('"add": A_p should win at +m; "sub": A_n should win at −m.')


def search_table(records: Sequence[Mapping]) -> Styler:
    """Training searches' candidates (`search.read_records`), one row per (method, form,
    learning rate) and one column per schedule (epochs × batch size), each cell its validation
    accuracy at its chosen m; the chosen candidates in bold."""
    import pandas as pd

    if not records:
        raise ValueError("search_table needs at least one search record")
    shared = {(record["task"], record["validation_pairs"]) for record in records}
    if len(shared) > 1:
        raise ValueError(f"the search records were made on different validation pairs: {sorted(shared)}")
    (task, validation_pairs), = shared

    def schedule(epochs: int, batch: int) -> str:
        return f"{epochs} × {batch}"

    frame = pd.concat([record["table"].assign(method=record["method"]) for record in records], ignore_index=True)
    frame = frame.assign(
        schedule=[schedule(e, b) for e, b in zip(frame.epochs, frame.batch_size, strict=True)],
        cell=[f"{a:.0%} (m = {m:g})" for a, m in zip(frame.accuracy, frame.m, strict=True)])
    order = list(dict.fromkeys(schedule(e, b) for record in records for e, b in record["space"]["schedules"]))
    rows = list(dict.fromkeys(zip(frame.method, frame.form, frame.lr, strict=True)))  # in the records' order
    grid = frame.pivot(index=["method", "form", "lr"], columns="schedule", values="cell")
    grid = grid.reindex(index=pd.MultiIndex.from_tuples(rows, names=grid.index.names), columns=order)
    grid = grid.fillna("").reset_index()
    grid.columns.name = None
    chosen = {(record["method"], form, c["lr"], schedule(c["epochs"], c["batch_size"]))
              for record in records for form, c in record["chosen"].items()}

    def bold(shown: pd.DataFrame) -> pd.DataFrame:
        return shown.apply(lambda row: ["font-weight: bold" if (row.method, row.form, row.lr, name) in chosen
                                        else "" for name in row.index], axis=1, result_type="broadcast")

    return (table(grid, {"lr": "{:g}"}).apply(bold, axis=None)
            .set_caption(f"Validation accuracy on {validation_pairs} held-out training pairs ({task}) per "
                         "method, form and schedule (epochs × batch size); bold: the schedule chosen per "
                         "method and form."))


def _short(value: object) -> object:
    """A tuple as short text: long numeric grids as their first two values, an ellipsis, the last."""
    if not isinstance(value, tuple):
        return value
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in value]
    return ", ".join(shown) if len(shown) <= 4 else f"{shown[0]}, {shown[1]}, …, {shown[-1]} ({len(shown)} values)"


def cut(text: object, width: int, keep: str = "start") -> str:
    """Text on one line, cut to `width` characters with an ellipsis where it was cut (keeping its
    start, or with `keep="end"` its end); an empty answer says so."""
    text = " ".join(str(text).split())
    if not text:
        return "(nothing: the turn ends at once)"
    if len(text) <= width:
        return text
    return text[: width - 1].rstrip() + "…" if keep == "start" else "…" + text[len(text) - width + 1 :].lstrip()


def answers_table(generations: pd.DataFrame, width: int = 160) -> Styler:
    """Generations (`evaluation_generations`) as one row per update and one column per question,
    each answer cut to `width` characters (`cut`)."""
    wide = (generations.assign(answer=generations.generation.map(lambda text: cut(text, width)),
                               question=generations["index"].map(lambda i: f"answer {i + 1}"))
            .pivot_table(index=["update", "m"], columns="question", values="answer", aggfunc="first", sort=False)
            .reset_index())
    wide.columns.name = None
    return table(wide, {"m": "{:.3g}"})


def evaluation_sample(evaluation: TaskEvaluation, question: int = 0, width: int = 160) -> Styler:
    """Every update's answer to one test question of an evaluated task, with the judge's scores and
    reasons where a judge scored them; captioned with the task and the question."""
    rows = evaluation.judged if evaluation.judged is not None else evaluation.generations
    if rows is None:
        raise ValueError(f"the {evaluation.task} evaluation has no generations (evaluate_task(generate=True))")
    rows = rows[rows["index"] == question]
    if rows.empty:
        raise ValueError(f"the {evaluation.task} generations have no question {question}")
    shown = rows.assign(answer=rows.generation.map(lambda text: cut(text, width)))
    reasons = [c for c in rows.columns if c.endswith("_answer")]
    scores = [c for c in rows.columns if c.endswith("_score") or c == "harmonic_mean"]
    for column in reasons:
        shown[column.removesuffix("_answer") + " reason"] = rows[column].map(lambda text: cut(text, width))
    columns = ["update", "m", "answer", *scores, *(c.removesuffix("_answer") + " reason" for c in reasons)]
    caption = f"{evaluation.task}: {cut(rows.question.iloc[0], 2 * width)}"
    return table(shown[columns], {"m": "{:.3g}"}).set_caption(caption)


def reference_table(references: Mapping[int, ManifoldReference], labels: Mapping[int, str]) -> Styler:
    """One row per hidden state: what each manifold reference was fitted on and what it found."""
    import pandas as pd

    return table(pd.DataFrame([{
        "hidden state": labels.get(state, str(state)), "samples": ref.n_samples, "PCA k (90 %)": ref.n_components,
        "variance explained": ref.explained_variance, "Ledoit-Wolf shrinkage": ref.covariance.shrinkage_,
        "probe accuracy (train)": ref.probe_accuracy,
        "cos(DiffMean, probe)": float(ref.diffmean_direction @ ref.probe_direction),
    } for state, ref in references.items()]))
