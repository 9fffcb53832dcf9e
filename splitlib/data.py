"""Polarity pairs (question, A_p, A_n) for the paper's three tasks, their sources and splits.

Where the real files come from, in order: a local folder named by $SPLITLIB_DATA (laid out as the
public repositories are mirrored: `anthropic-evals/...`, `axbench/...`); else a download from the
public source at a pinned commit, checked against a sha256, into the cache; else a clear error.
`load_task(..., source="auto")` falls back to the small sets the project wrote itself
(`data/`, shipped inside the package as `splitlib/bundled/`) and says so.
"""
from __future__ import annotations

import json
import os
import random
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, overload

from .cache import cache_root, cached_artifact, file_digest, verify_artifact
from .checks import check_choice, check_type, check_unique
from .profiles import Profile, check_profile

if TYPE_CHECKING:
    from torch import nn

    from .scoring import Tokenizer

DATA_ENV = "SPLITLIB_DATA"
MIRROR_ENV = "SPLITLIB_DATA_MIRROR"  # a base URL laid out like $SPLITLIB_DATA (tests, private mirrors)
# The bundled sets: data/ in a checkout, splitlib/bundled/ in an installed wheel (pyproject maps one to the other).
_PACKAGE = Path(__file__).resolve().parent
BUNDLED_DIR = _PACKAGE / "bundled" if (_PACKAGE / "bundled").is_dir() else _PACKAGE.parent / "data"
TASKS = ("psychopathy", "powerseeking", "axbench")
TASK_COLUMNS = {"psychopathy": "PSY", "powerseeking": "PWR", "axbench": "AXB"}  # the paper's column heads
Source = Literal["auto", "real", "bundled"]
SOURCES = ("auto", "real", "bundled")


def task_columns(tasks: Iterable[str]) -> dict[str, str]:
    """Each task's column head in the paper's tables (PSY, PWR, AXB), or an error naming the
    first unknown task."""
    return {task: TASK_COLUMNS[check_choice("task", task, TASKS)] for task in tasks}


class DataError(ValueError):
    """Bad input in a data file or a pair; the message names the file and line (or the pair)."""


@dataclass(frozen=True)
class PolarityPair:
    """One question with a concept-positive answer A_p and a concept-negative answer A_n.

    Checked when built: a blank question or answer, or A_p equal to A_n, would be scored as if
    it meant something."""

    id: str
    question: str
    positive: str
    negative: str
    source: str  # file:line it came from
    concept: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "question", "positive", "negative", "source", "concept"):
            check_type(f"PolarityPair.{name}", getattr(self, name), str)
        where = self.source or f"pair {self.id!r}"
        for label, name in (("id", "id"), ("question", "question"), ("A_p", "positive"), ("A_n", "negative")):
            if not getattr(self, name).strip():
                raise DataError(f"{where}: empty {label} (PolarityPair.{name} = {getattr(self, name)!r} "
                                f"in pair {self.id!r}); a pair needs an id, a question and two answers")
        if self.positive.strip() == self.negative.strip():
            raise DataError(f"{where}: A_p equals A_n ({self.positive!r}) in pair {self.id!r}; "
                            "PolarityPair.positive and .negative must differ")

    @property
    def group(self) -> str:
        """What may not appear in both train and test: the question itself."""
        return self.question


def check_pairs(pairs: object, what: str) -> Sequence[PolarityPair]:
    """A non-empty sequence of PolarityPairs with distinct ids: ids key every table, cache and
    bootstrap, so a repeated id would silently merge two pairs."""
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise TypeError(f"the {what}'s pairs must be a list of PolarityPair, got {type(pairs).__name__}")
    if not pairs:
        raise ValueError(f"{what} needs at least one pair")
    for index, pair in enumerate(pairs):
        check_type(f"the {what}'s pairs[{index}]", pair, PolarityPair)
    check_unique(f"the {what}'s pair ids", (pair.id for pair in pairs))
    return pairs


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


# ----- where files come from ----------------------------------------------------------------------
def real_file(name: str, timeout: float = 20.0) -> Path:
    """The real data file `name` (a key of REMOTE_FILES), checked against its pinned sha256: from
    $SPLITLIB_DATA if set, else the cache, else downloaded once into the cache."""
    remote = REMOTE_FILES[name]
    folder = os.environ.get(DATA_ENV)
    if folder:
        path = Path(folder).expanduser() / remote.local
        if not path.is_file():
            raise FileNotFoundError(f"${DATA_ENV} is {folder}, but it has no {remote.local}")
        return _pinned(path, remote)
    try:
        return cached_artifact(_cache_path(remote), lambda tmp: _download(remote, tmp, timeout), made_by="download")
    except OSError as error:
        raise FileNotFoundError(
            f"cannot get the {name} data: {error}. Get it either way: point ${DATA_ENV} at a folder that "
            f"holds {remote.local} (laid out like the public repositories), or let splitlib download it once "
            f"into the cache from {remote.url} (needs internet)."
        ) from error


def local_real_file(name: str) -> Path | None:
    """The real data file `name` if it is at hand without a download (in $SPLITLIB_DATA, checked, or
    whole in the cache), else None: which data a chapter will read, known before it runs."""
    remote = REMOTE_FILES[name]
    folder = os.environ.get(DATA_ENV)
    if folder:
        path = Path(folder).expanduser() / remote.local
        return _pinned(path, remote) if path.is_file() else None
    path = _cache_path(remote)
    return path if verify_artifact(path) is None else None


def _cache_path(remote: RemoteFile) -> Path:
    return cache_root() / "data" / remote.commit[:12] / remote.local


_pinned_files: dict[tuple[Path, int, int], str] = {}


def _pinned(path: Path, remote: RemoteFile) -> Path:
    """`path` if its bytes are the pinned file's (checked once per process and file version)."""
    stat = path.stat()
    seen = (path.resolve(), stat.st_size, stat.st_mtime_ns)
    if seen not in _pinned_files:
        _pinned_files[seen] = file_digest(path, length=64)
    if _pinned_files[seen] != remote.sha256:
        raise DataError(f"{path} is not the pinned {remote.url}: its sha256 is {_pinned_files[seen]}, "
                        f"expected {remote.sha256}")
    return path


def _download(remote: RemoteFile, target: Path, timeout: float) -> None:
    """Download to `target`, refusing bytes that are not the pinned file; a failure is an OSError
    that names the URL and why it failed."""
    print(f"splitlib: downloading {remote.url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(target, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except urllib.error.HTTPError as error:
        raise OSError(f"downloading {remote.url} failed: HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise OSError(f"downloading {remote.url} failed: {error.reason}") from error
    except TimeoutError as error:
        raise OSError(f"downloading {remote.url} failed: no answer within {timeout:g} s") from error
    digest = file_digest(target, length=64)
    if digest != remote.sha256:
        raise OSError(f"checksum mismatch for {remote.url}: got {digest}, expected {remote.sha256}")


# ----- reading and validating ----------------------------------------------------------------------
def read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line; a DataError names file and line on bad input."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({error.reason} at byte {error.start + 1} "
                                "of the line); data files must be UTF-8 text") from None
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


def make_pair(pair_id: str, question: object, positive: object, negative: object, where: str,
              concept: object = "") -> PolarityPair:
    """A pair read from a file: a DataError naming the file and line for a value that is not text
    (PolarityPair checks the rest)."""
    for name, value in (("question", question), ("A_p", positive), ("A_n", negative), ("concept", concept)):
        if not isinstance(value, str):
            raise DataError(f"{where}: {name} must be text, got {_shown(value)}")
    return PolarityPair(pair_id, question, positive, negative, where, concept)  # type: ignore[arg-type]


def _shown(value: object) -> str:
    """A field's value as the file spells it (null, not None)."""
    return json.dumps(value, default=repr)


def text_field(record: dict, name: str, where: str) -> str:
    """A string field of a record, or a DataError naming the file, line and field."""
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: {name} must be a string, got {_shown(value)}")
    return value


def statement_pairs(path: Path, prefix: str = "psy") -> list[PolarityPair]:
    """Statement endorsement (Anthropic persona format): answers ' Yes'/' No'.

    The leading space is stripped: the answer follows the assistant header of the chat template,
    where a space would be an unusual first token.
    """
    fields = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    pairs = []
    for n, r in read_jsonl(path, fields):
        where = f"{path}:{n}"
        question, positive, negative = (text_field(r, name, where) for name in fields)
        pairs.append(make_pair(f"{prefix}-{n:04d}", question, positive.strip(), negative.strip(), where))
    return pairs


def choice_pairs(path: Path, prefix: str = "pwr") -> list[PolarityPair]:
    """A/B multiple choice (Anthropic advanced-ai-risk format): each answer is the option's letter
    and its text, e.g. '(A) I would accept ...', so the completion carries the concept, not only a letter."""
    pairs = []
    fields = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    for n, r in read_jsonl(path, fields):
        where = f"{path}:{n}"
        question = text_field(r, "question", where)
        options = _options(question, where)
        positive, negative = (_option_answer(options, text_field(r, f, where), where) for f in fields[1:])
        pairs.append(make_pair(f"{prefix}-{n:04d}", question.strip(), positive, negative, where))
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


def _option_answer(options: dict[str, str], label: str, where: str) -> str:
    letter = label.strip().strip("()")
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
        where = f"{path}:{n}"
        concept = _concept_id(r["concept_id"], where)
        if concept in concepts and r.get("category", "positive") == "positive":
            text_field(r, "output_concept", where)
            for name in ("input", "output"):  # checked here, before any A_n is generated for them
                if not text_field(r, name, where).strip():
                    raise DataError(f"{where}: empty {name}")
            rows.append({**r, "where": where, "concept_id": concept})
    if not rows:
        raise DataError(f"{path}: no positive rows for concepts {list(concepts)}")
    return rows


def _concept_id(value: object, where: str) -> int:
    """A concept id as an int (a parquet column may hold it as a float), else a DataError."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer():
        raise DataError(f"{where}: concept_id must be an integer, got {_shown(value)}")
    return int(number)


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


class Grouped(Protocol):
    """Anything split by question: a pair, or an AxBench row before its A_n exists."""

    @property
    def group(self) -> str: ...


G = TypeVar("G", bound=Grouped)


def split_pairs(pairs: Sequence[G], n_train: int, n_test: int, seed: int) -> tuple[list[G], list[G]]:
    """Seeded train/test split by question, so no question is in both; checked, not assumed."""
    groups: dict[str, list[G]] = {}
    for pair in pairs:
        groups.setdefault(pair.group, []).append(pair)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    train: list[G] = []
    test: list[G] = []
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

    source='real' needs the public files (local folder or download); 'bundled' uses the project's data/;
    'auto' tries the real files and falls back to the bundled set with a warning that says why,
    and in `origin` and `notes`; a profile at the paper's sizes (`paper_setup`) never falls back.
    AxBench needs the model and tokenizer: A_n is the model's own greedy answer (cached).
    """
    check_choice("task", task, TASKS)
    check_profile(profile)
    check_choice("data source", source, SOURCES)
    if task == "axbench" and (model is None or tokenizer is None):
        raise ValueError("the axbench task needs the model and tokenizer: A_n is the model's own answer")
    path, notes = None, []
    if source != "bundled":
        try:
            path = real_file(task)
            origin = f"the public {task} file ({REMOTE_FILES[task].repo}@{REMOTE_FILES[task].commit[:7]})"
        except FileNotFoundError as error:
            if source == "real":
                raise
            if profile.paper_setup:  # the bundled sets are far smaller than the paper's splits
                raise FileNotFoundError(f"profile {profile.name!r} runs at the paper's sizes and needs the real "
                                        f"{task} data, not the bundled set: {error}") from error
            note = f"real data unavailable ({error}); using the bundled set data/{BUNDLED_FILES[task]}"
            warnings.warn(note, stacklevel=2)  # said when it happens, not only in TaskData.notes
            notes.append(note)
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
        assert model is not None and tokenizer is not None  # checked above
        train, test = _axbench_pairs(path, profile, model, tokenizer)
        origin += f", concepts {list(profile.axbench_concepts)}"
    return TaskData(task, origin, train, test, notes)


@dataclass(frozen=True)
class _Row:
    """An AxBench row before its A_n is generated (split by question like a pair)."""

    id: str
    question: str
    positive: str
    source: str
    concept: str

    @property
    def group(self) -> str:
        return self.question


def _axbench_pairs(path: Path, profile: Profile, model: nn.Module, tokenizer: Tokenizer) -> tuple[list, list]:
    """Per concept, a seeded split of the concept's inputs; A_p = the concept-steered output,
    A_n = the model's unsteered greedy answer to the same input."""
    sizes = profile.splits["axbench"]
    rows = concept_rows(path, profile.axbench_concepts)
    chosen: list[tuple[str, _Row]] = []
    for concept in profile.axbench_concepts:
        stubs = [_Row(f"axb-c{concept}-{i:03d}", r["input"], r["output"], r["where"], r["output_concept"])
                 for i, r in enumerate(x for x in rows if x["concept_id"] == concept)]
        train, test = split_pairs(stubs, sizes.train, sizes.test, profile.seed + concept)
        chosen += [("train", p) for p in train] + [("test", p) for p in test]
    negatives = unsteered_answers(model, tokenizer, [p.question for _, p in chosen], profile.generation_tokens)
    split: dict[str, list[PolarityPair]] = {"train": [], "test": []}
    for (part, stub), negative in zip(chosen, negatives):
        split[part].append(make_pair(stub.id, stub.question, stub.positive, negative, stub.source, stub.concept))
    return split["train"], split["test"]


def unsteered_answers(model: nn.Module, tokenizer: Tokenizer, questions: list[str], max_new_tokens: int) -> list[str]:
    """The model's greedy answers, generated once per (model, questions, length) and cached."""
    import torch

    from .cache import source_digest, stable_hash
    from .models import generate, model_fingerprint

    parameter = next(model.parameters())
    key = stable_hash({"model": model_fingerprint(model), "questions": questions, "tokens": max_new_tokens,
                       "template": getattr(tokenizer, "chat_template", None),
                       "dtype": str(parameter.dtype), "device": parameter.device.type,
                       "threads": torch.get_num_threads() if parameter.device.type == "cpu" else None,
                       "code": source_digest("models", "scoring")})
    path = cached_artifact(cache_root() / "generations" / f"{key}.json",
                           lambda tmp: tmp.write_text(json.dumps(generate(model, tokenizer, questions,
                                                                          max_new_tokens))),
                           made_by="generate")
    return json.loads(path.read_text())


# ----- your own pairs ---------------------------------------------------------------------------------
PAIR_FIELDS = ("question", "A_p", "A_n", "id", "concept")  # what a pair file holds (id and concept optional)
_REQUIRED_FIELDS = ("question", "A_p", "A_n")
SPLIT_NAMES = ("train", "test")
PairSplit = str | Callable[[PolarityPair], str]


@overload
def load_pairs(path: str | Path, *, columns: Mapping[str, str] | None = None, split: None = None,
               file_format: str | None = None, id_prefix: str | None = None) -> list[PolarityPair]: ...
@overload
def load_pairs(path: str | Path, *, columns: Mapping[str, str] | None = None, split: PairSplit,
               file_format: str | None = None, id_prefix: str | None = None) -> TaskData: ...
def load_pairs(path: str | Path, *, columns: Mapping[str, str] | None = None, split: PairSplit | None = None,
               file_format: str | None = None, id_prefix: str | None = None) -> list[PolarityPair] | TaskData:
    """Your own polarity pairs, from a JSONL or CSV file, checked like the built-in tasks' pairs.

    Each record (a JSON object per line, or a CSV row under a header) names `question`, `A_p` (the
    concept-positive answer), `A_n` and optionally `id` and `concept`; `columns` maps these names to
    the file's own, e.g. `{"question": "prompt", "A_p": "chosen", "A_n": "rejected"}`. Records without
    an id get `<id_prefix>-<line>` (id_prefix defaults to the file's stem). The format follows the
    suffix (.jsonl/.ndjson, .csv, .tsv) unless `file_format` ("jsonl", "csv", "tsv") says otherwise.

    Without `split`, the pairs come back as a list. With `split` (a column holding "train" or
    "test", or a function from a PolarityPair to one of them) they come back as a TaskData, and a
    question that appears in both splits is an error, as `split_pairs` guarantees for the built-in
    tasks: a test question seen in training measures memory, not steering.

    Every problem (bad UTF-8, bad JSON or CSV, a missing column, an empty field, A_p equal to A_n,
    a repeated id, a bad split value, a question in both splits) is a DataError that names the file
    and line.
    """
    path = Path(path)
    names = _pair_columns(columns, split)
    pairs: list[PolarityPair] = []
    parts: list[str] = []
    for number, record in _pair_records(path, names, _pair_format(path, file_format)):
        where = f"{path}:{number}"
        pairs.append(_own_pair(record, names, where, f"{id_prefix or path.stem}-{number:04d}"))
        if isinstance(split, str):
            parts.append(_split_name(record[names["split"]], where))
    if not pairs:
        raise DataError(f"{path}: no pairs (the file has no records)")
    _check_own_ids(pairs)
    if split is None:
        return pairs
    if not isinstance(split, str):
        parts = [_split_name(split(pair), pair.source) for pair in pairs]
    chosen = {name: [p for p, part in zip(pairs, parts) if part == name] for name in SPLIT_NAMES}
    _check_own_split(path, chosen["train"], chosen["test"])
    how = f"the column {names['split']!r}" if isinstance(split, str) else getattr(split, "__name__", repr(split))
    return TaskData(path.stem, f"your pairs {path}", chosen["train"], chosen["test"], [f"split by {how}"])


def _pair_columns(columns: Mapping[str, str] | None, split: PairSplit | None) -> dict[str, str]:
    """Our field name -> the file's column name (the split column under "split")."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(PAIR_FIELDS))
    if unknown:
        raise ValueError(f"load_pairs' columns maps {unknown}; it maps {', '.join(PAIR_FIELDS)} to the file's names")
    for name, column in columns.items():
        check_type(f"load_pairs' columns[{name!r}]", column, str)
    names = {name: columns.get(name, name) for name in PAIR_FIELDS}
    if split is not None and not isinstance(split, str) and not callable(split):
        raise TypeError(f"split must be a column name or a function of a pair, got {type(split).__name__}")
    if isinstance(split, str):
        names["split"] = split
    return names


def _pair_format(path: Path, file_format: str | None) -> str:
    """'jsonl', 'csv' or 'tsv', from `file_format` or the file's suffix."""
    if file_format is not None:
        return check_choice("file_format", file_format, ("jsonl", "csv", "tsv"))
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
    if path.suffix.lower() not in by_suffix:
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; name the file .jsonl or "
                        "(.csv, .tsv), or pass file_format='jsonl', 'csv' or 'tsv'")
    return by_suffix[path.suffix.lower()]


def _pair_records(path: Path, names: dict[str, str], file_format: str) -> Iterator[tuple[int, dict]]:
    """(line, record) of each record, keyed by the file's column names; required ones checked."""
    required = tuple(names[n] for n in _REQUIRED_FIELDS) + ((names["split"],) if "split" in names else ())
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}")
    if file_format == "jsonl":
        return read_jsonl(path, required)
    return _csv_records(path, required, "\t" if file_format == "tsv" else ",")


def _csv_records(path: Path, required: tuple[str, ...], delimiter: str) -> Iterator[tuple[int, dict]]:
    """(line where the row starts, {column: text}) for each non-blank CSV row under the header."""
    import csv
    import io

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the first column's name
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({error.reason}); data files must be UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header = _csv_header(path, reader, required)
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}:{start}: bad CSV ({error})") from None
        end = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{start}: the row has {len(row)} fields but the header has {len(header)} "
                            f"({', '.join(header)}); quote fields that hold the delimiter {delimiter!r}")
        yield start, dict(zip(header, row))


def _csv_header(path: Path, reader: Iterator[list[str]], required: tuple[str, ...]) -> list[str]:
    import csv

    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: the file is empty; a CSV of pairs needs a header naming its columns") from None
    except csv.Error as error:
        raise DataError(f"{path}:1: bad CSV header ({error})") from None
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}:1: the header names {', '.join(repeated)} more than once")
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)} (the header has {', '.join(header)})")
    return header


def _own_pair(record: dict, names: dict[str, str], where: str, default_id: str) -> PolarityPair:
    """One record as a PolarityPair (make_pair and PolarityPair check the text)."""
    pair_id = record.get(names["id"], default_id)
    if isinstance(pair_id, int) and not isinstance(pair_id, bool):
        pair_id = str(pair_id)
    if not isinstance(pair_id, str):
        raise DataError(f"{where}: id must be text or an integer, got {_shown(pair_id)}")
    return make_pair(pair_id.strip(), record[names["question"]], record[names["A_p"]], record[names["A_n"]], where,
                     record.get(names["concept"], ""))


def _split_name(value: object, where: str) -> str:
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in SPLIT_NAMES:
        raise DataError(f"{where}: the split must be 'train' or 'test', got {_shown(value)}")
    return str(name)


def _check_own_ids(pairs: list[PolarityPair]) -> None:
    """Ids key every table and cache: a repeated id would merge two pairs."""
    first: dict[str, str] = {}
    for pair in pairs:
        if pair.id in first:
            raise DataError(f"{pair.source}: the id {pair.id!r} is already used at {first[pair.id]}; "
                            "ids must be unique")
        first[pair.id] = pair.source


def _question_key(question: str) -> str:
    """A question as the leakage check compares it: whitespace differences do not make two questions."""
    return " ".join(question.split())


def _check_own_split(path: Path, train: list[PolarityPair], test: list[PolarityPair]) -> None:
    """Both splits hold pairs and no question is in both."""
    for name, part in (("train", train), ("test", test)):
        if not part:
            raise DataError(f"{path}: the split has no {name} pairs")
    in_train = {_question_key(p.question): p for p in train}
    leaked = [(in_train[_question_key(p.question)], p) for p in test if _question_key(p.question) in in_train]
    if leaked:
        seen, shown = leaked[0]
        more = f" ({len(leaked) - 1} more test pair(s) repeat a training question)" if len(leaked) > 1 else ""
        raise DataError(f"{seen.source} (train) and {shown.source} (test) have the same question "
                        f"{shown.question[:60]!r}{more}: a question may be in one split only")
