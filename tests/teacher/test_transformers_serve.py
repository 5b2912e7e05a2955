"""Generation against a real OpenAI-compatible server: ``transformers serve`` on
loopback, serving the tiny random Llama from a local directory (offline), reached through
the stub's counting, fault-injecting proxy mode (so the concurrency limit and retries are
checked against the real server). Needs the ``teacher`` extra (transformers[serving]:
fastapi, uvicorn)."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from dhrd.teacher.generate import GenerateConfig, run
from dhrd.teacher.openai_endpoint import EndpointConfig, EndpointTeacher
from tests.teacher.stub_openai import StubServer, StubState
from tests.teacher.teacher_helpers import read_jsonl, write_cb

pytest.importorskip("fastapi", reason="transformers serve needs the 'teacher' extra")
pytest.importorskip("uvicorn", reason="transformers serve needs the 'teacher' extra")

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
SERVE = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"


from dhrd.fileio import free_port  # noqa: E402


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """(base url, model dir) of a running ``transformers serve``; the tiny tokenizer gets
    a chat template so /chat/completions works too."""
    from transformers import AutoTokenizer

    model_dir = tmp_path_factory.mktemp("served") / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model_dir)
    port = free_port()
    log = open(model_dir.parent / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", str(model_dir), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = (model_dir.parent / "serve.log").read_text()[-3000:]
                    pytest.fail(f"transformers serve did not start:\n{tail}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", str(model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_generate_against_transformers_serve(served, tmp_path, api):
    root, model_dir = served
    data = write_cb(tmp_path / "cb.jsonl", 6)
    # ids 1 and 2 get a 500 / a 429 from the proxy first, then the real server's answer
    state = StubState(upstream=root, faults={"1": ["500"], "2": ["429"]})
    with StubServer(state) as url:
        teacher = EndpointTeacher(EndpointConfig(url, model_dir, api=api, concurrency=2, timeout=60, max_tokens=6,
                                                 max_retries=2, backoff_base=0.05, backoff_max=0.1))
        cfg = GenerateConfig("cb", str(data), str(tmp_path / "r.jsonl"), require_end_marker=False, progress=False)
        s = run(cfg, teacher)
    assert (s.written, dict(s.failed)) == (6, {}), read_jsonl(cfg.failures_path) if s.failed else ""
    assert s.retries == 2 and state.attempts["1"] == 2 and state.attempts["2"] == 2
    assert state.max_in_flight == 2  # the limit, reached and never passed
    assert all(b["model"] == model_dir and ("messages" in b) == (api == "chat") for b in state.bodies)
    rows = read_jsonl(cfg.out_path)
    assert sorted(r["id"] for r in rows) == [str(i) for i in range(6)]
    assert all(r["rationale"] and r["completion_tokens"] > 0 and r["finish_reason"] in ("length", "stop")
               for r in rows)
    assert s.prompt_tokens > 0
