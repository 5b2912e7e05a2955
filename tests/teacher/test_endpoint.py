"""The OpenAI-compatible endpoint teacher against a stub server on loopback: the
concurrency limit, retries with backoff, fault recording, the API key's handling, both
APIs and blind mode."""

import json

import pytest

from dhrd.teacher.generate import GenerateConfig, run
from dhrd.teacher.openai_endpoint import EndpointConfig, EndpointTeacher
from tests.teacher.stub_openai import StubServer, StubState
from tests.teacher.teacher_helpers import CB_LABELS, read_jsonl, write_cb


def endpoint(url, **kw):
    kw = {"model": "stub-model", "concurrency": 4, "timeout": 5.0, "max_retries": 3,
          "backoff_base": 0.01, "backoff_max": 0.05, **kw}
    return EndpointTeacher(EndpointConfig(base_url=url, **kw))


def all_files_text(tmp_path) -> str:
    return "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())


def test_concurrency_limit_is_honoured(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 24)
    state = StubState(delay=0.05)
    with StubServer(state) as url:
        s = run(GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), progress=False), endpoint(url))
    assert s.written == 24 and not s.failed
    assert state.max_in_flight == 4  # never more, and the pool did keep 4 busy
    body = state.bodies[0]
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == ("stub-model", 0.1, 0.7, 500)
    assert body["messages"][0]["role"] == "system" and "Let's think step by step." in body["messages"][1]["content"]
    rows = read_jsonl(tmp_path / "r.jsonl")
    assert sorted(int(r["id"]) for r in rows) == list(range(24))
    assert rows[0]["rationale"].endswith("it follows.") and rows[0]["end_marker"]  # marker, whitespace cut
    assert rows[0]["teacher"] == "openai:stub-model" and rows[0]["completion_tokens"] > 0


def test_faults_are_retried_or_recorded_and_nothing_is_lost_or_doubled(tmp_path, monkeypatch):
    monkeypatch.setenv("DHRD_TEST_KEY", "sk-very-secret-123")
    data = write_cb(tmp_path / "cb.jsonl", 12)
    faults = {"1": ["500", "500"], "2": ["429", "429"], "3": ["sleep"],       # recover on retry
              "4": ["500"] * 3, "5": ["sleep"] * 3, "6": ["empty"],           # fail (3 attempts)
              "7": ["echo_key"] * 3}                                          # fail, body echoes the key
    state = StubState(faults=faults, sleep_s=1.5, api_key="sk-very-secret-123")
    with StubServer(state) as url:
        teacher = endpoint(url, timeout=0.5, max_retries=2, api_key_env="DHRD_TEST_KEY")
        cfg = GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), progress=False)
        s = run(cfg, teacher)
        assert state.unauthorized == 0
        assert state.attempts["1"] == 3 and state.attempts["2"] == 3 and state.attempts["3"] == 2
        assert state.attempts["4"] == 3 and state.attempts["5"] == 3 and state.attempts["6"] == 1
        assert dict(s.failed) == {"http_500": 2, "timeout": 1, "empty": 1}
        assert s.written == 8 and s.retries == 2 + 2 + 1 + 2 + 2 + 2  # ids 1, 2, 3, 4, 5, 7

        written = [r["id"] for r in read_jsonl(cfg.out_path)]
        failed = {f["id"]: f for f in read_jsonl(cfg.failures_path)}
        assert sorted(written, key=int) == ["0", "1", "2", "3", "8", "9", "10", "11"]
        assert set(failed) == {"4", "5", "6", "7"} and not set(failed) & set(written)
        assert failed["4"]["detail"].startswith("http_500") and failed["5"]["reason"] == "timeout"
        assert "***" in failed["7"]["detail"]
        summary = json.loads(open(cfg.summary_path).read())
        assert summary["failed"] == {"http_500": 2, "timeout": 1, "empty": 1}

        # a rerun with --retry_failures: the faults are used up, everything is written once
        s = run(GenerateConfig("cb", str(data), cfg.out, retry_failures=True, progress=False), teacher)
    assert (s.attempted, s.written, s.recovered, s.retries) == (4, 4, 4, 0)
    assert sorted((r["id"] for r in read_jsonl(cfg.out_path)), key=int) == [str(i) for i in range(12)]
    assert "sk-very-secret-123" not in all_files_text(tmp_path)


def test_client_errors_are_not_retried_and_a_missing_key_sends_no_header(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = write_cb(tmp_path / "cb.jsonl", 2)
    state = StubState(api_key="needed")  # every request is a 401
    with StubServer(state) as url:
        s = run(GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), progress=False), endpoint(url))
    assert dict(s.failed) == {"http_401": 2} and state.unauthorized == 2 and sum(state.attempts.values()) == 2


def test_completions_api_and_blind_mode_parse_the_teacher_label(tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 6)
    # the stub answers the gold label for even ids, "neutral" for odd ones, nonsense for 5
    answer = {str(i): CB_LABELS[i % 3] if i % 2 == 0 else "neutral" for i in range(6)}
    state = StubState(answer=answer.get, faults={"5": ["gibberish"]})
    with StubServer(state) as url:
        cfg = GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), mode="blind", progress=False)
        s = run(cfg, endpoint(url, api="completions"))
    assert all("prompt" in b and "messages" not in b for b in state.bodies)
    assert "The correct answer" not in state.bodies[0]["prompt"]
    assert dict(s.failed) == {"unparsable_label": 1}
    rows = {r["id"]: r for r in read_jsonl(cfg.out_path)}
    assert {i: r["teacher_label"] for i, r in rows.items()} == {i: answer[i] for i in "01234"}
    assert all("Answer:" not in r["rationale"] and r["prompt_version"] == "blind-v1" for r in rows.values())
    assert read_jsonl(cfg.failures_path)[0]["detail"] == "answer=None"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="api must be"):
        EndpointTeacher(EndpointConfig("http://x/v1", "m", api="embeddings"))
    with pytest.raises(ValueError, match="concurrency"):
        EndpointTeacher(EndpointConfig("http://x/v1", "m", concurrency=0))


def test_backoff_grows_exponentially_up_to_the_cap(tmp_path, monkeypatch):
    from dhrd.teacher import openai_endpoint

    caps = []
    monkeypatch.setattr(openai_endpoint.random, "uniform", lambda lo, hi: caps.append((lo, hi)) or hi)
    data = write_cb(tmp_path / "cb.jsonl", 1)
    state = StubState(faults={"0": ["500", "503", "429", "500", "500"]})
    with StubServer(state) as url:
        teacher = endpoint(url, max_retries=5, backoff_base=0.01, backoff_max=0.05)
        s = run(GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), progress=False), teacher)
    assert (s.written, s.retries, state.attempts["0"]) == (1, 5, 6)
    assert caps == [(0, 0.01), (0, 0.02), (0, 0.04), (0, 0.05), (0, 0.05)]  # full jitter below the cap
