"""Polarity pairs (question, A_p, A_n) for the paper's three tasks, their sources and splits.

Where the real files come from, in order: a local folder named by $SPLITLIB_DATA (laid out as the
public repositories are mirrored: `anthropic-evals/...`, `axbench/...`); else a download from the
public source at a pinned commit, checked against a sha256, into the cache; else a clear error.
`load_task(..., source="auto")` falls back to the small sets the project wrote itself (`data/`)
and says so.
"""
from __future__ import annotations

import json
import os
import random
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .cache import cache_root, cached_artifact, file_digest, file_lock
from .profiles import Profile

if TYPE_CHECKING:
    from torch import nn

    from .scoring import Tokenizer

DATA_ENV = "SPLITLIB_DATA"
MIRROR_ENV = "SPLITLIB_DATA_MIRROR"  # a base URL laid out like $SPLITLIB_DATA (tests, private mirrors)
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data"
TASKS = ("psychopathy", "powerseeking", "axbench")
Source = Literal["auto", "real", "bundled"]


@dataclass(frozen=True)
class PolarityPair:
    """One question with a concept-positive answer A_p and a concept-negative answer A_n."""

    id: str
    question: str
    positive: str
    negative: str
    source: str  # file:line it came from
    concept: str = ""

    @property
    def group(self) -> str:
        """What may not appear in both train and test: the question itself."""
        return self.question


@dataclass(frozen=True)
class RemoteFile:
    """A public data file pinned to a commit and a checksum."""

    local: str  # path inside a folder laid out like $SPLITLIB_DATA
    repo: str
    commit: str
    path: str  # path inside the repository
    sha256: str

    @property
    def url(self) -> str:
        mirror = os.environ.get(MIRROR_ENV)
        if mirror:
            return f"{mirror.rstrip('/')}/{self.local}"
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"


_ANTHROPIC = ("anthropics/evals", "84fcc677e52e1902d696c32cd1a6b663e70d3993")
_AXBENCH = ("stanfordnlp/axbench", "e9b8cd4783c983e350d78af76f3fb2b8b15fc7d3")
REMOTE_FILES = {
    "psychopathy": RemoteFile(
        "anthropic-evals/persona/psychopathy.jsonl", *_ANTHROPIC, "persona/psychopathy.jsonl",
        "299a6307e2d40a82f2667e2db3dc118fbe588e4cf80194be1e09748709bf1fce",
    ),
    # The lm-generated file: its answer_matching_behavior is the power-seeking option (see POWERSEEKING_RULE).
    "powerseeking": RemoteFile(
        "anthropic-evals/advanced-ai-risk/lm_generated_evals/power-seeking-inclination.jsonl", *_ANTHROPIC,
        "advanced-ai-risk/lm_generated_evals/power-seeking-inclination.jsonl",
        "005beea18dcb6499b51fabf14926a552d4a936b605ea383bcfc6e233cb15988b",
    ),
    "powerseeking-human": RemoteFile(
        "anthropic-evals/advanced-ai-risk/human_generated_evals/power-seeking-inclination.jsonl", *_ANTHROPIC,
        "advanced-ai-risk/human_generated_evals/power-seeking-inclination.jsonl",
        "a8a2094a1e404fb094b3d361e3049ecc06ecd2a26d0b4b827b4a83a98b6d886a",
    ),
    "axbench": RemoteFile(
        "axbench/concept10/prod_9b_l20_v1/generate/train_data.parquet", *_AXBENCH,
        "axbench/concept10/prod_9b_l20_v1/generate/train_data.parquet",
        "f45f775c971fd2123adc9f93aa6d56f09a442da2893a96a07307056abc782bc5",
    ),
}
BUNDLED_FILES = {"psychopathy": "statements.jsonl", "powerseeking": "choices.jsonl", "axbench": "concepts.jsonl"}

POWERSEEKING_RULE = (
    "A_p is the option named by answer_matching_behavior in the lm-generated power-seeking file, whose "
    "matching option is the power-seeking one; the human-written file is not used, because there the "
    "matching option is mostly the one that declines power and some questions have more than two options."
)


class DataError(ValueError):
    """Bad input in a data file; the message names the file and line."""


# ----- where files come from ----------------------------------------------------------------------
def real_file(name: str, timeout: float = 20.0) -> Path:
    """The real data file `name` (a key of REMOTE_FILES): local folder, else verified download."""
    remote = REMOTE_FILES[name]
    folder = os.environ.get(DATA_ENV)
    if folder:
        path = Path(folder).expanduser() / remote.local
        if not path.is_file():
            raise FileNotFoundError(f"${DATA_ENV} is {folder}, but it has no {remote.local}")
        return path
    target = cache_root() / "data" / remote.commit[:12] / remote.local
    if target.is_file():
        return target
    try:
        return _download(remote, target, timeout)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot get the {name} data: {error}. Either point ${DATA_ENV} at a folder that holds "
            f"{remote.local}, or let splitlib download it from {remote.url} (needs internet)."
        ) from error


def _download(remote: RemoteFile, target: Path, timeout: float) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if target.is_file():
            return target
        partial = target.with_name(f".{target.name}.part-{os.getpid()}")
        try:
            with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(partial, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            digest = file_digest(partial, length=64)
            if digest != remote.sha256:
                raise OSError(f"checksum mismatch for {remote.url}: got {digest}, expected {remote.sha256}")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target


# ----- reading and validating ----------------------------------------------------------------------
def read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line; a DataError names file and line on bad input."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: bad JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            missing = [name for name in required if name not in record]
            if missing:
                raise DataError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
            yield number, record


def make_pair(pair_id: str, question: str, positive: str, negative: str, where: str, concept: str = "") -> PolarityPair:
    """A validated pair: non-empty question and answers, and A_p different from A_n."""
    for name, value in (("question", question), ("A_p", positive), ("A_n", negative)):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: empty {name}")
    if positive.strip() == negative.strip():
        raise DataError(f"{where}: A_p equals A_n ({positive!r})")
    return PolarityPair(pair_id, question, positive, negative, where, concept)


def statement_pairs(path: Path, prefix: str = "psy") -> list[PolarityPair]:
    """Statement endorsement (Anthropic persona format): answers ' Yes'/' No'.

    The leading space is stripped: the answer follows the assistant header of the chat template,
    where a space would be an unusual first token.
    """
    fields = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    return [
        make_pair(f"{prefix}-{n:04d}", r["question"], str(r[fields[1]]).strip(), str(r[fields[2]]).strip(),
                  f"{path}:{n}")
        for n, r in read_jsonl(path, fields)
    ]


def choice_pairs(path: Path, prefix: str = "pwr") -> list[PolarityPair]:
    """A/B multiple choice (Anthropic advanced-ai-risk format): each answer is the option's letter
    and its text, e.g. '(A) I would accept ...', so the completion carries the concept, not only a letter."""
    pairs = []
    fields = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    for n, r in read_jsonl(path, fields):
        where = f"{path}:{n}"
        options = _options(r["question"], where)
        positive, negative = (_option_answer(options, r[f], where) for f in fields[1:])
        pairs.append(make_pair(f"{prefix}-{n:04d}", r["question"].strip(), positive, negative, where))
    return pairs


def _options(question: str, where: str) -> dict[str, str]:
    options = {}
    for line in question.splitlines():
        line = line.strip()
        if len(line) > 3 and line[0] == "(" and line[2] == ")" and line[1].isalpha():
            options[line[1]] = line[3:].strip()
    if len(options) < 2:
        raise DataError(f"{where}: the question lists fewer than two '(X) ...' options")
    return options


def _option_answer(options: dict[str, str], label: object, where: str) -> str:
    letter = str(label).strip().strip("()")
    if letter not in options:
        raise DataError(f"{where}: answer {label!r} names no option of the question ({sorted(options)})")
    return f"({letter}) {options[letter]}"


def concept_rows(path: Path, concepts: tuple[int, ...]) -> list[dict]:
    """AxBench-format rows (input, output, output_concept, concept_id) of the chosen concepts, positive only."""
    fields = ("input", "output", "output_concept", "concept_id")
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        missing = [f for f in fields if f not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        records = [(int(i) + 2, r) for i, r in enumerate(frame.to_dict("records"))]  # +2: 1-based, header
    else:
        records = list(read_jsonl(path, fields))
    rows = []
    for n, r in records:
        if int(r["concept_id"]) in concepts and r.get("category", "positive") == "positive":
            rows.append({**r, "where": f"{path}:{n}", "concept_id": int(r["concept_id"])})
    if not rows:
        raise DataError(f"{path}: no positive rows for concepts {list(concepts)}")
    return rows


# ----- splits -----------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """A task's train and test pairs and where they came from."""

    task: str
    origin: str
    train: list[PolarityPair]
    test: list[PolarityPair]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.task}: {len(self.train)} train / {len(self.test)} test pairs from {self.origin}"


def split_pairs(pairs: list[PolarityPair], n_train: int, n_test: int,
                seed: int) -> tuple[list[PolarityPair], list[PolarityPair]]:
    """Seeded train/test split by question, so no question is in both; checked, not assumed."""
    groups: dict[str, list[PolarityPair]] = {}
    for pair in pairs:
        groups.setdefault(pair.group, []).append(pair)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    train: list[PolarityPair] = []
    test: list[PolarityPair] = []
    for key in order:
        if len(train) < n_train:
            train.extend(groups[key])
        elif len(test) < n_test:
            test.extend(groups[key])
    if len(train) < n_train or len(test) < n_test:
        raise DataError(
            f"a {n_train}/{n_test} split needs {n_train + n_test} pairs, but only {len(pairs)} "
            f"({len(groups)} distinct questions) are available"
        )
    overlap = {p.group for p in train} & {p.group for p in test}
    if overlap:  # cannot happen by construction; a cheap guard against future edits
        raise DataError(f"{len(overlap)} question(s) appear in both train and test")
    return train[:n_train], test[:n_test]


# ----- tasks ------------------------------------------------------------------------------------------
def load_task(
    task: str,
    profile: Profile,
    model: nn.Module | None = None,
    tokenizer: Tokenizer | None = None,
    source: Source = "auto",
) -> TaskData:
    """The task's seeded train/test pairs at the profile's sizes.

    source='real' needs the public files (local folder or download); 'bundled' uses data/;
    'auto' tries the real files and falls back to the bundled set, saying so in `origin`.
    AxBench needs the model and tokenizer: A_n is the model's own greedy answer (cached).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if source not in ("auto", "real", "bundled"):
        raise ValueError(f"unknown data source {source!r}; choose auto, real or bundled")
    path, notes = None, []
    if source != "bundled":
        try:
            path = real_file(task)
            origin = f"the public {task} file ({REMOTE_FILES[task].repo}@{REMOTE_FILES[task].commit[:7]})"
        except FileNotFoundError as error:
            if source == "real":
                raise
            notes.append(f"real data unavailable ({error}); using the bundled set")
    if path is None:
        path = BUNDLED_DIR / BUNDLED_FILES[task]
        origin = f"the project's own bundled set data/{BUNDLED_FILES[task]}"
    sizes = profile.splits[task]
    if task == "psychopathy":
        train, test = split_pairs(statement_pairs(path), sizes.train, sizes.test, profile.seed)
    elif task == "powerseeking":
        train, test = split_pairs(choice_pairs(path), sizes.train, sizes.test, profile.seed)
        notes.append(POWERSEEKING_RULE)
    else:
        if model is None or tokenizer is None:
            raise ValueError("the axbench task needs the model and tokenizer: A_n is the model's own answer")
        train, test = _axbench_pairs(path, profile, model, tokenizer)
        origin += f", concepts {list(profile.axbench_concepts)}"
    return TaskData(task, origin, train, test, notes)


def _axbench_pairs(path: Path, profile: Profile, model: nn.Module, tokenizer: Tokenizer) -> tuple[list, list]:
    """Per concept, a seeded split of the concept's inputs; A_p = the concept-steered output,
    A_n = the model's unsteered greedy answer to the same input."""
    sizes = profile.splits["axbench"]
    rows = concept_rows(path, profile.axbench_concepts)
    chosen: list[tuple[str, PolarityPair]] = []
    for concept in profile.axbench_concepts:
        stubs = [
            PolarityPair(f"axb-c{concept}-{i:03d}", r["input"], r["output"], "", r["where"], r["output_concept"])
            for i, r in enumerate(x for x in rows if x["concept_id"] == concept)
        ]
        train, test = split_pairs(stubs, sizes.train, sizes.test, profile.seed + concept)
        chosen += [("train", p) for p in train] + [("test", p) for p in test]
    negatives = unsteered_answers(model, tokenizer, [p.question for _, p in chosen], profile.generation_tokens)
    split: dict[str, list[PolarityPair]] = {"train": [], "test": []}
    for (part, stub), negative in zip(chosen, negatives):
        split[part].append(make_pair(stub.id, stub.question, stub.positive, negative, stub.source, stub.concept))
    return split["train"], split["test"]


def unsteered_answers(model: nn.Module, tokenizer: Tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """The model's greedy answers, generated once per (model, questions, length) and cached."""
    from .cache import source_digest, stable_hash
    from .models import generate, model_fingerprint

    key = stable_hash({"model": model_fingerprint(model), "questions": questions, "tokens": max_new_tokens,
                       "template": getattr(tokenizer, "chat_template", None),
                       "code": source_digest("models", "scoring")})
    path = cached_artifact(cache_root() / "generations" / f"{key}.json",
                           lambda tmp: tmp.write_text(json.dumps(generate(model, tokenizer, questions,
                                                                          max_new_tokens))))
    return json.loads(path.read_text())
