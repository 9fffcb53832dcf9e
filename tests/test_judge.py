"""The judges of open-ended evaluation: strict parsing, the harmonic mean, and the chat back end
against a real chat-completions server on 127.0.0.1 (scripted per test), plus the local back end
on a tiny random model."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import torch

from splitlib import judge as judging
from splitlib.judge import (
    MAX_REASKS,
    POWERSEEKING,
    RUBRICS,
    ChatCompletionsJudge,
    JudgeError,
    LocalJudge,
    agreement,
    harmonic_mean,
    judge_from_environment,
    judge_generations,
    judgment_path,
    judgment_summary,
    parse_rating,
)

KEY = "sk-test-VERY-SECRET-4f8a2c"
Reply = tuple[int, str, float]  # (HTTP status, answer text or error message, seconds to wait first)


class ChatServer:
    """A chat-completions endpoint whose replies a test scripts: `reply(n, body, headers)` for the
    n-th request (from 0). It records every request and the most requests it served at once."""

    def __init__(self) -> None:
        self.reply: Callable[[int, dict, dict], Reply] = lambda n, body, headers: (200, "Fine. Rating: [[2]]", 0.0)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.active = self.most_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    number = len(server.requests)
                    server.requests.append(body)
                    server.headers.append({name.lower(): value for name, value in self.headers.items()})
                    server.active += 1
                    server.most_active = max(server.most_active, server.active)
                try:
                    status, text, wait = server.reply(number, body, server.headers[number])
                    time.sleep(wait)
                    payload = ({"id": f"c{number}", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": text}}]}
                               if status == 200 else {"error": {"message": text, "type": "scripted", "code": status}})
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass
                finally:
                    with server.lock:
                        server.active -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def judge(self, **options: object) -> ChatCompletionsJudge:
        settings: dict = {"api_key": KEY, "concurrency": 4, "timeout": 5.0, "max_retries": 3, "backoff": 0.01}
        return ChatCompletionsJudge("judge-model", base_url=self.url, **{**settings, **options})


@pytest.fixture
def server(cache_dir) -> Iterator[ChatServer]:
    """A live server on a free port of 127.0.0.1 (and a fresh cache), shut down after the test."""
    chat = ChatServer()
    thread = threading.Thread(target=chat.httpd.serve_forever, daemon=True)
    thread.start()
    yield chat
    chat.httpd.shutdown()
    chat.httpd.server_close()


def table(n: int, concept: str = "the ocean") -> pd.DataFrame:
    """A small generations table as evaluation_generations returns it."""
    return pd.DataFrame({"update": ["a"] * n, "m": [1.0] * n, "index": range(n),
                         "question_id": [f"q{i}" for i in range(n)], "question": [f"Question {i}?" for i in range(n)],
                         "concept": [concept] * n, "generation": [f"Answer number {i}." for i in range(n)]})


# ----- fixed inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "high", "expected"), [
    ("Clear enough.\nRating: [[2]]", 2, 2),
    ("rating:[[ 0 ]]", 2, 0),
    ("Rating: [[2.0]]", 2, 2),
    ("Rating: [[4]]", 4, 4),
    ("Rating: [[3]]", 2, None),  # above the 0-2 scale
    ("Rating: [[5]]", 4, None),  # above the 0-4 scale
    ("Rating: [[-1]]", 4, None),
    ("Rating: [[1.5]]", 2, None),  # not a whole score
    ("Rating: [[two]]", 2, None),
    ("Rating: [[1]] on reflection Rating: [[2]]", 2, None),  # two ratings that disagree
    ("Rating: [[1]] and again Rating: [[1]]", 2, 1),
    ("I give it a 2.", 2, None),
    ("Rating: 2", 2, None),  # not the [[score]] format
    ("Answer in the form Rating: [[score]].\nRating: [[3]]", 4, 3),  # the format quoted back is skipped
    ("", 2, None),
    (None, 2, None),
])
def test_parse_rating_reads_only_what_is_there(text, high, expected):
    assert parse_rating(text, high) == expected


def test_harmonic_mean_is_zero_when_any_score_is_zero_and_missing_when_any_is_missing():
    assert harmonic_mean([2, 2, 2]) == 2
    assert harmonic_mean([1, 2, 2]) == pytest.approx(1.5)
    assert harmonic_mean([1, 1, 2]) == pytest.approx(1.2)
    assert harmonic_mean([0, 2, 2]) == 0
    assert harmonic_mean([None, 2, 2]) is None
    assert harmonic_mean([None, 0, 2]) is None  # missing, not 0: a missing score is never read
    assert harmonic_mean([float("nan"), 1, 1]) is None
    with pytest.raises(ValueError, match=">= 0"):
        harmonic_mean([-1, 2, 2])


def test_rubrics_have_their_scales_versions_and_answer_format():
    assert {name: rubric.high for name, rubric in RUBRICS.items()} == {
        "concept": 2, "instruction": 2, "fluency": 2, "powerseeking": 4}
    assert len({rubric.version for rubric in RUBRICS.values()}) == len(RUBRICS)
    for rubric in RUBRICS.values():
        prompt = rubric.prompt("QUESTION", "CONCEPT", "GENERATION")
        assert "Rating: [[score]]" in prompt and "GENERATION" in prompt
        assert all(f"{score} = " in prompt for score in range(rubric.high + 1))
        assert f"{rubric.high + 1} = " not in prompt
    assert "CONCEPT" in RUBRICS["concept"].prompt("QUESTION", "CONCEPT", "G")
    assert "QUESTION" in RUBRICS["instruction"].prompt("QUESTION", "CONCEPT", "G")
    assert "QUESTION" in POWERSEEKING.prompt("QUESTION", "", "G")
    note = judging.POWERSEEKING_NOTE
    assert "neither the paper nor its reference code publishes" in note and "written for the book" in note


def test_the_prompt_version_and_the_judge_enter_the_cache_key(server):
    judge = server.judge()
    path = judgment_path(judge, POWERSEEKING, "q", "", "g")
    assert judgment_path(judge, POWERSEEKING, "q", "", "g") == path
    assert judgment_path(judge, dataclasses.replace(POWERSEEKING, version="powerseeking-2"), "q", "", "g") != path
    assert judgment_path(ChatCompletionsJudge("other", base_url=server.url), POWERSEEKING, "q", "", "g") != path
    assert judgment_path(judge, POWERSEEKING, "q", "", "g2") != path


def test_agreement_is_the_rank_correlation_across_updates():
    preference = {"a": 0.1, "b": 2.0, "c": 5.0, "d": 9.0}
    assert agreement({"a": 0.2, "b": 0.9, "c": 1.5, "d": 1.9}, preference).rho == pytest.approx(1.0)
    result = agreement(pd.Series({"a": 1.9, "b": 1.5, "c": 0.9, "d": 0.2, "e": 1.0}), preference)
    assert result.rho == pytest.approx(-1.0) and result.n == 4  # only the updates both name
    assert agreement({"a": 0.2, "b": float("nan"), "c": 1.5, "d": 1.9}, preference).n == 3
    with pytest.raises(ValueError, match="at least 3"):
        agreement({"a": 1.0, "b": 2.0}, preference)


def test_summary_leaves_missing_scores_out_of_the_mean():
    judged = pd.DataFrame({"update": ["x", "x", "x", "y"],
                           "powerseeking_score": pd.array([4, None, 2, 0], dtype="Int64")})
    summary = judgment_summary(judged).set_index("update")
    assert summary.loc["x", "powerseeking_score"] == 3.0  # (4 + 2) / 2, not (4 + 0 + 2) / 3
    assert summary.loc["x", "powerseeking_score_missing"] == 1 and summary.loc["x", "n"] == 3
    assert summary.loc["y", "powerseeking_score"] == 0.0 and summary.loc["y", "powerseeking_score_missing"] == 0


# ----- the chat back end, against the server ----------------------------------------------------------
def test_well_formed_ratings_are_scored_cached_and_not_asked_again(server):
    server.reply = lambda n, body, headers: (200, "Reasons.\nRating: [[2]]" if n % 3 else "Weak.\nRating: [[1]]", 0)
    judged = judge_generations(table(3), "axbench", server.judge(), progress=False)
    assert len(server.requests) == 9  # three rubrics for three rows
    request = server.requests[0]
    assert request["temperature"] == 0 and request["model"] == "judge-model"
    assert judged[["concept_score", "instruction_score", "fluency_score"]].notna().all().all()
    assert (judged["concept"] == "the ocean").all()  # the concept itself is kept beside its score
    assert (judged["missing"] == 0).all()
    for row in judged.itertuples():
        scores = [row.concept_score, row.instruction_score, row.fluency_score]
        assert row.harmonic_mean == pytest.approx(harmonic_mean(scores))
    assert judged["concept_answer"].str.contains("Rating").all()
    again = judge_generations(table(3), "axbench", server.judge(), progress=False)
    assert len(server.requests) == 9  # all from the cache
    pd.testing.assert_frame_equal(again, judged)


def test_rate_limits_server_errors_and_timeouts_are_retried(server):
    script = {0: (429, "slow down", 0.0), 1: (500, "oops", 0.0), 2: (503, "busy", 0.0), 3: (200, "late", 1.5)}
    server.reply = lambda n, body, headers: script.get(n, (200, "Rating: [[3]]", 0.0))
    judge = server.judge(concurrency=1, timeout=0.5, max_retries=5)
    judged = judge_generations(table(1), "powerseeking", judge, progress=False)
    assert len(server.requests) == 5 and judge.retries == 4  # 429, 500, 503, a timeout, then an answer
    assert judged["powerseeking_score"].tolist() == [3]


def test_a_judge_that_keeps_failing_raises_without_the_key(server):
    server.reply = lambda n, body, headers: (500, f"broken for {headers.get('authorization')}", 0.0)
    judge = server.judge(max_retries=2)
    with pytest.raises(JudgeError, match="failed 3 times") as caught:
        judge_generations(table(1), "powerseeking", judge, progress=False)
    assert len(server.requests) == 3
    assert KEY not in str(caught.value)
    server.reply = lambda n, body, headers: (401, f"bad key {headers.get('authorization')}", 0.0)
    with pytest.raises(JudgeError, match="refused") as caught:  # not retried: it would not help
        judge_generations(table(1), "powerseeking", judge, progress=False)
    assert len(server.requests) == 4 and KEY not in str(caught.value)


def test_unreadable_answers_are_asked_again_then_recorded_missing_with_their_text(server):
    def reply(n: int, body: dict, headers: dict) -> Reply:
        return (200, "Rating: [[4]]" if "Question 0?" in body["messages"][0]["content"] else "Hmm, hard to say.", 0.0)

    server.reply = reply
    judged = judge_generations(table(2), "powerseeking", server.judge(), progress=False)
    assert len(server.requests) == 1 + (1 + MAX_REASKS)  # the unreadable one is asked 3 more times
    assert judged["powerseeking_score"].tolist()[0] == 4 and pd.isna(judged["powerseeking_score"].tolist()[1])
    assert judged["missing"].tolist() == [0, 1]
    assert judged["powerseeking_answer"].tolist()[1] == "Hmm, hard to say."
    followup = [body for body in server.requests if len(body["messages"]) == 3][0]["messages"]
    assert followup[1] == {"role": "assistant", "content": "Hmm, hard to say."}
    assert "Rating: [[score]]" in followup[2]["content"]
    summary = judgment_summary(judged)
    assert summary["powerseeking_score"].tolist() == [4.0] and summary["powerseeking_score_missing"].tolist() == [1]
    judge_generations(table(2), "powerseeking", server.judge(), progress=False)
    assert len(server.requests) == 5  # a missing judgment is cached too...
    judge_generations(table(2), "powerseeking", server.judge(), progress=False, retry_missing=True)
    assert len(server.requests) == 9  # ...unless asked again on purpose


def test_a_reminder_can_recover_a_rating(server):
    server.reply = lambda n, body, headers: (200, "Rating: [[1]]" if len(body["messages"]) == 3 else "Unsure.", 0.0)
    judged = judge_generations(table(2), "powerseeking", server.judge(), progress=False)
    assert judged["powerseeking_score"].tolist() == [1, 1] and len(server.requests) == 4


def test_no_more_requests_at_once_than_the_concurrency(server):
    server.reply = lambda n, body, headers: (200, "Rating: [[2]]", 0.05)
    judge_generations(table(12), "powerseeking", server.judge(concurrency=3), progress=False)
    assert len(server.requests) == 12
    assert 2 <= server.most_active <= 3


def test_a_judge_that_fails_midway_loses_nothing_and_a_rerun_resumes(server, cache_dir):
    server.reply = lambda n, body, headers: (200, "Rating: [[1]]", 0.0) if n < 4 else (500, "down", 0.0)
    with pytest.raises(JudgeError):
        judge_generations(table(10), "powerseeking", server.judge(concurrency=1, max_retries=1), progress=False)
    assert len(list((cache_dir / "judgments").rglob("*.json"))) == 4
    assert not list((cache_dir / "judgments").rglob(".tmp-*"))
    asked = len(server.requests)
    server.reply = lambda n, body, headers: (200, "Rating: [[3]]", 0.0)
    judged = judge_generations(table(10), "powerseeking", server.judge(), progress=False)
    assert len(server.requests) - asked == 6  # only the six not yet judged
    assert judged["powerseeking_score"].tolist() == [1] * 4 + [3] * 6


def test_the_key_never_reaches_the_disk_the_table_or_the_repr(server, cache_dir):
    # A server that echoes the Authorization header (the key) into every answer.
    server.reply = lambda n, body, headers: (200, f"You sent {headers.get('authorization')}. Rating: [[2]]", 0.0)
    judge = server.judge()
    judged = judge_generations(table(2), "axbench", judge, progress=False)
    assert all(KEY in headers["authorization"] for headers in server.headers)  # it was sent...
    files = [path for path in cache_dir.rglob("*") if path.is_file()]
    assert files and not [path for path in files if KEY.encode() in path.read_bytes()]  # ...and never written
    assert KEY not in judged.to_json() and KEY not in repr(judge) and KEY not in judge.name
    assert "<hidden>" in judged["concept_answer"].iloc[0]


def test_judge_from_environment(monkeypatch, server):
    for name in ("SPLITLIB_JUDGE_URL", "SPLITLIB_JUDGE_MODEL", "SPLITLIB_JUDGE_KEY", "OPENAI_API_KEY",
                 "SPLITLIB_JUDGE_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    assert judge_from_environment() is None
    monkeypatch.setenv("SPLITLIB_JUDGE_URL", server.url)
    with pytest.raises(ValueError, match="SPLITLIB_JUDGE_MODEL"):
        judge_from_environment()
    monkeypatch.setenv("SPLITLIB_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("SPLITLIB_JUDGE_CONCURRENCY", "2")
    judge = judge_from_environment()
    assert isinstance(judge, ChatCompletionsJudge) and judge.concurrency == 2 and KEY not in repr(judge)
    judge_generations(table(1), "powerseeking", judge, progress=False)
    assert server.headers[-1]["authorization"] == f"Bearer {KEY}"
    monkeypatch.setenv("SPLITLIB_JUDGE_KEY", "sk-the-judge-own")
    judge_generations(table(2), "powerseeking", judge_from_environment(), progress=False)
    assert server.headers[-1]["authorization"] == "Bearer sk-the-judge-own"
    monkeypatch.delenv("SPLITLIB_JUDGE_URL")
    for name in ("SPLITLIB_JUDGE_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(ValueError, match="needs a key"):
        judge_from_environment()


def test_bad_arguments_are_named(server):
    judge = server.judge()
    with pytest.raises(ValueError, match="unknown task"):
        judge_generations(table(1), "psychopathy", judge, progress=False)
    with pytest.raises(ValueError, match="concept"):
        judge_generations(table(1, concept=""), "axbench", judge, progress=False)
    with pytest.raises(ValueError, match="generation"):
        judge_generations(table(1).drop(columns="generation"), "powerseeking", judge, progress=False)
    with pytest.raises(TypeError, match="judge must be a Judge"):
        judge_generations(table(1), "powerseeking", "gpt-4.1-mini", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        server.judge(concurrency=0)
    assert server.requests == []


# ----- the local back end -----------------------------------------------------------------------------
@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a loaded machine idle threads cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_local_judge_runs_a_model_records_its_unreadable_answers_and_caches(tokenizer, cache_dir, one_thread):
    from conftest import tiny_model

    judge = LocalJudge(tiny_model("llama", vocab_size=49152), tokenizer, max_new_tokens=3, batch_size=8)
    asked: list[int] = []
    complete = judge.complete

    def counted(conversations):
        asked.append(len(conversations))
        return complete(conversations)

    judge.complete = counted  # type: ignore[method-assign]
    judged = judge_generations(table(2), "axbench", judge, progress=False)
    assert asked and sum(asked) >= 6  # six judgments, more if answers were unreadable (random weights)
    for name in ("concept", "instruction", "fluency"):
        assert judged[f"{name}_answer"].map(lambda text: isinstance(text, str)).all()
    scores = judged[["concept_score", "instruction_score", "fluency_score"]]
    assert (judged["missing"] == scores.isna().sum(axis=1)).all()
    assert judged["harmonic_mean"].isna().tolist() == (judged["missing"] > 0).tolist()
    assert judge.name.startswith("local:") and "float32" in judge.name
    before = len(asked)
    again = judge_generations(table(2), "axbench", judge, progress=False)
    assert len(asked) == before  # all from the cache
    pd.testing.assert_frame_equal(again, judged)
    answers = dict(LocalJudge(judge.model, tokenizer, max_new_tokens=4).complete(
        [[{"role": "user", "content": "Rate this."}], [{"role": "user", "content": "And this, please."}]]))
    assert sorted(answers) == [0, 1]


def test_a_local_judge_from_the_environment(monkeypatch):
    for name in ("SPLITLIB_JUDGE_URL", "SPLITLIB_JUDGE_MODEL", "SPLITLIB_JUDGE_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    loaded = []
    fake = classmethod(lambda cls, source: loaded.append(source) or "judge")
    monkeypatch.setattr(LocalJudge, "from_pretrained", fake)
    monkeypatch.setenv("SPLITLIB_JUDGE_LOCAL", "qwen2.5-7b-it")
    assert judge_from_environment() == "judge" and loaded == ["qwen2.5-7b-it"]
    monkeypatch.setenv("SPLITLIB_JUDGE_MODEL", "gpt-4.1-mini")
    with pytest.raises(ValueError, match="not both"):
        judge_from_environment()
