"""``dhrd serve``: a real server process per model directory, spoken to over its socket.
Answers equal the direct predictions (lean: LeanClassifier; HF: the model on each input
alone), also under concurrent clients; bad requests get 4xx JSON errors and the server
keeps serving; a model error is a 500 for its batch only; a directory that cannot be
served ends the command with one line and exit code 2 before any port is bound."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.helpers import make_tiny_tokenizer, tiny_config
from tests.lean_helpers import REPO, TEXTS, make_dual_head, make_training_output
from tests.serve_helpers import (  # noqa: E402
    POOL,
    ROWS,
    RTE_LABELS,
    FakeModel,
    Server,
    app_server,
    build_lean_dir,
    call,
    check_predictions,
    child_env,
    raw_exchange,
    serve_cmd,
)


@pytest.fixture(scope="module")
def lean_dir(tmp_path_factory):
    return build_lean_dir(tmp_path_factory.mktemp("serve-lean"))


def save_hf_classifier(path, template: str | None, task: str | None = None) -> str:
    from transformers import AutoModelForSequenceClassification

    from dhrd.data.templates import CONFIG_KEY

    cfg = tiny_config("llama", num_labels=2, id2label=dict(enumerate(RTE_LABELS)),
                      label2id={lab: i for i, lab in enumerate(RTE_LABELS)})
    torch.manual_seed(13)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    with torch.no_grad():
        model.score.weight.mul_(40)
    if template is not None:
        setattr(model.config, CONFIG_KEY, template)
    if task is not None:
        model.config.dhrd = {"task": task}  # as dhrd.export.hf records it
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from dhrd.data.templates import TEMPLATES

    return save_hf_classifier(tmp_path_factory.mktemp("serve-hf"), TEMPLATES["rte"][0], task="rte")


LEAN_LIMITS = dict(max_items=16, max_body_bytes=20000, max_batch_size=8, max_wait_ms=20, max_text_chars=3000,
                   max_queue_items=64, request_timeout_s=30.0, body_timeout_s=2.0, drain_timeout_s=30.0)


@pytest.fixture(scope="module")
def lean_server(lean_dir, tmp_path_factory):
    args = [a for k, v in LEAN_LIMITS.items() for a in (f"--{k}", v)]
    server = Server(lean_dir, tmp_path_factory.mktemp("logs") / "lean.log", *args)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hf_server(hf_dir, tmp_path_factory):
    server = Server(hf_dir, tmp_path_factory.mktemp("logs") / "hf.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lean_clf(lean_dir):
    from dhrd.serve.classifier import LeanClassifier

    return LeanClassifier.load(lean_dir)


# ---------------------------------------------------------------------------------------
# Lean directory.

def test_lean_texts_and_rows_equal_direct_predictions(lean_server, lean_clf, lean_dir):
    from dhrd.data.tasks import get_task

    port = lean_server.port
    assert call(port, "GET", "/v1/model") == (200, {
        "format": "lean", "task": "rte", "labels": RTE_LABELS, "accepts": ["texts", "rows"],
        "formulation": "classify", "model_dir": lean_dir, **LEAN_LIMITS})
    status, reply = call(port, "POST", "/v1/classify", {"texts": TEXTS})
    assert status == 200
    check_predictions(reply, lean_clf.predict(TEXTS))
    assert len({p["label"] for p in reply["predictions"]}) == 2  # the head is decisive both ways

    rendered = [get_task("rte").render(r) for r in ROWS]
    status, by_rows = call(port, "POST", "/v1/classify", {"rows": ROWS})
    assert status == 200
    assert by_rows == call(port, "POST", "/v1/classify", {"texts": rendered})[1]
    check_predictions(by_rows, lean_clf.predict(rendered))


def test_concurrent_clients_get_their_own_answers(lean_server, lean_clf):
    """8 clients x 5 requests of 1..13 mixed-length texts (some over --max_batch_size 8,
    so cut into chunks): every reply holds exactly its own texts' predictions, in order."""
    want = lean_clf.predict(POOL)

    def client(k: int) -> list[tuple[list[int], int, dict]]:
        out = []
        for j in range(5):
            n = 1 + (3 * k + 5 * j) % 13
            picks = [(7 * k + 3 * j + 5 * i) % len(POOL) for i in range(n)]
            out.append((picks, *call(lean_server.port, "POST", "/v1/classify", {"texts": [POOL[i] for i in picks]})))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(client, range(8)) for r in rs]
    assert len(results) == 40
    for picks, status, reply in results:
        assert status == 200, reply
        check_predictions(reply, want[picks])


def test_bad_requests_get_4xx_and_the_server_keeps_serving(lean_server, lean_clf):
    port = lean_server.port
    post = lambda body: call(port, "POST", "/v1/classify", body)  # noqa: E731
    cases = [
        (b'{"texts": ["a",', 400, "malformed JSON"),
        (b"\xff\xfe not utf-8", 400, "body: not valid UTF-8 (byte 0"),
        (["a"], 400, "must be a JSON object"),
        ({}, 400, 'exactly one of "texts"'),
        ({"texts": ["a"], "rows": [{}]}, 400, 'exactly one of "texts"'),
        ({"text": ["a"]}, 400, "unknown key(s) 'text'"),
        ({"texts": "a"}, 400, '"texts" must be an array, got a string'),
        ({"texts": []}, 400, '"texts" is empty'),
        ({"texts": ["fine", 3]}, 400, "texts[1]: expected a string, got an integer"),
        ({"texts": ["fine", "  "]}, 400, "texts[1]: empty"),
        ({"rows": [ROWS[0], ["p", "h"]]}, 400, "rows[1]: expected an object of task fields, got an array"),
        ({"rows": [ROWS[0], {"premise": "p"}]}, 422, "rows[1]: field 'hypothesis': missing"),
        ({"rows": [{"premise": 5, "hypothesis": "h"}]}, 422, "rows[0]: field 'premise': expected a string"),
        ({"texts": ["a"] * 17}, 413, "17 texts; at most 16 per request (--max_items)"),
        ({"texts": ["a", "b" * 3001]}, 413, "texts[1]: 3001 characters; at most 3000 (--max_text_chars)"),
        ({"texts": ["a" * 2500] * 8}, 413, "at most 20000 (--max_body_bytes)"),
        (b"", 400, "empty body"),
        (b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "body: JSON nested too deeply"),
        (b'{"texts": ["\\ud800 x"]}', 400, "body: a \\ud800-\\udfff escape"),
        (b'{"texts": ["a"], "texts": ["b"]}', 400, "body: duplicate key 'texts'"),
        (b'{"texts": [' + b"9" * 5000 + b"]}", 400, "body: malformed JSON (Exceeds the limit"),
        (b'{"texts": ["a", NaN]}', 400, "texts[1]: expected a string, got a number"),
        ({"texts": [["nested"]]}, 400, "texts[0]: expected a string, got an array"),
        ({"rows": [{"question": "q?", "passage": "p"}]}, 422, "rows[0]: field 'premise': missing"),
    ]
    for body, code, message in cases:
        status, reply = post(body)
        assert status == code and message in reply["error"], (message, reply)

    # bodies over the limit are refused without being read: by Content-Length, or by the
    # bytes received when the length is not declared (chunked)
    status, reply = raw_exchange(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 1000000000\r\nConnection: close\r\n\r\n{\"texts\"")
    assert status == 413 and "body of 1000000000 bytes; at most 20000" in reply["error"]
    chunk = json.dumps({"texts": ["a" * 25000]}).encode()
    status, reply = raw_exchange(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                       + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
    assert status == 413 and "body over 20000 bytes" in reply["error"]

    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    t0 = time.monotonic()  # slow loris: 10 of 50 declared bytes, then nothing (--body_timeout_s 2)
    status, reply = raw_exchange(port, head + b"Content-Length: 50\r\n\r\n" + b'{"texts": ')
    assert status == 408 and "body not complete after 2 s (10 of 50 declared bytes received" in reply["error"]
    assert time.monotonic() - t0 < 10
    status, reply = raw_exchange(port, head + b"Content-Length: 5\r\n\r\n" + b'{"texts": ["a"]}')  # says less
    assert status == 400 and "body: malformed JSON" in reply["error"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # says more, then hangs up
        s.sendall(head + b"Content-Length: 500\r\n\r\n" + b'{"texts": ["a"]}')
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert not data.startswith(b"HTTP/1.1 5"), data  # nothing to answer, or a 4xx; never a 500

    assert call(port, "GET", "/v1/nothing") == (404, {"error": "Not Found"})
    assert call(port, "GET", "/v1/classify") == (405, {"error": "Method Not Allowed"})
    status, reply = post({"texts": TEXTS})
    assert status == 200
    check_predictions(reply, lean_clf.predict(TEXTS))
    assert "Traceback" not in lean_server.output()


def test_openapi_document_declares_the_classify_body(lean_server):
    status, doc = call(lean_server.port, "GET", "/openapi.json")
    assert status == 200
    body = doc["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"texts", "rows"} and body["additionalProperties"] is False
    assert body["properties"]["texts"]["maxItems"] == LEAN_LIMITS["max_items"]
    assert body["properties"]["rows"]["items"] == {"$ref": "#/components/schemas/RteRow"}
    row = doc["components"]["schemas"]["RteRow"]
    assert row["required"] == ["premise", "hypothesis"] and row["properties"]["premise"]["type"] == "string"


class RowsOf:
    """A lean model of ``task`` that renders rows, for the schema checks alone."""

    format, accepts_rows, labels = "lean", True, ["a", "b"]

    def __init__(self, task: str):
        from dhrd.data.tasks import get_task

        self.task, self.render = task, get_task(task).render


@pytest.mark.parametrize("task, row, status, message", [
    ("wsc", {"text": "t", "target": {"span1_text": "a"}}, 422, "rows[0]: field 'target.span2_text': missing"),
    ("wsc", {"text": "t", "target": "a"}, 422, "rows[0]: field 'target': expected an object, got a string"),
    ("cqa", {"question": "q", "choices": ["a", 2]}, 422, "rows[0]: field 'choices[1]': expected a string, got an"),
    ("cqa", {"question": "q", "choices": ["a"]}, 422, "rows[0]: field 'choices': expected 5 choices, got 1"),
    ("copa", {"premise": "p", "choice1": "a", "choice2": "b", "question": "why"}, 422,
     "rows[0]: field 'question': expected \"cause\" or \"effect\", got \"why\""),
    ("boolq", {"passage": "p", "question": " "}, 422, "rows[0]: field 'question': empty (only whitespace)"),
    ("boolq", {"passage": "p", "question": "q", "idx": 1, "label": True}, 200, "Passage: p"),
])
def test_row_fields_are_the_tasks(task, row, status, message):
    """Row fields come from the task (Task.fields), nested ones named by their dotted path;
    what the schema cannot say (only whitespace, copa's cause or effect) the template does."""
    from dhrd.serve.http import ServeConfig
    from dhrd.serve.request_body import RequestError, request_texts

    body = json.dumps({"rows": [row]}).encode()
    if status == 200:
        assert request_texts(body, RowsOf(task), ServeConfig(model_dir="m"))[0].startswith(message)
        return
    with pytest.raises(RequestError) as e:
        request_texts(body, RowsOf(task), ServeConfig(model_dir="m"))
    assert (e.value.status, e.value.message[:len(message)]) == (status, message)


# ---------------------------------------------------------------------------------------
# Hugging Face directory.

def hf_reference(path: str, texts: list[str]) -> torch.Tensor:
    """The saved model on each input alone (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.cat([model(**tok(t, return_tensors="pt")).logits.float().softmax(-1) for t in texts])


def test_hf_directory_texts_and_rows(hf_server, hf_dir):
    from dhrd.data.templates import TEMPLATES, render_input

    port = hf_server.port
    status, info = call(port, "GET", "/v1/model")
    assert status == 200 and info["format"] == "hf" and info["task"] == "rte" and info["labels"] == RTE_LABELS
    assert info["accepts"] == ["texts", "rows"]
    texts = TEXTS + POOL[-3:]
    status, reply = call(port, "POST", "/v1/classify", {"texts": texts})
    assert status == 200
    check_predictions(reply, hf_reference(hf_dir, texts))

    rendered = [render_input(TEMPLATES["rte"][0], r) for r in ROWS]
    status, by_rows = call(port, "POST", "/v1/classify", {"rows": ROWS})
    assert status == 200 and by_rows == call(port, "POST", "/v1/classify", {"texts": rendered})[1]
    check_predictions(by_rows, hf_reference(hf_dir, rendered))
    status, reply = call(port, "POST", "/v1/classify", {"rows": [ROWS[0], {"premise": "p"}]})
    assert status == 422 and reply["error"].startswith("rows[1]: input row lacks a field") \
        and "hypothesis" in reply["error"]


def test_hf_directory_without_template_accepts_only_texts(tmp_path):
    from dhrd.serve.http import ServeConfig
    from dhrd.serve.request_body import RequestError, request_texts
    from dhrd.serve.served_model import load_model

    path = save_hf_classifier(tmp_path / "plain", template=None)
    model = load_model(path)
    assert model.task is None
    cfg = ServeConfig(model_dir=path)
    assert request_texts(b'{"texts": ["x"]}', model, cfg) == ["x"]
    with pytest.raises(RequestError) as e:
        request_texts(json.dumps({"rows": ROWS}).encode(), model, cfg)
    assert e.value.status == 400 and 'only "texts" is accepted' in e.value.message and path in e.value.message


def test_lean_and_hf_exports_of_one_model_serve_the_same(tmp_path):
    """dhrd.export.hf's directory and the lean export of the same training output load
    as served models giving the same task, labels, rendered rows and probabilities."""
    from dhrd.export.hf import export_hf
    from dhrd.export.lean import export_lean
    from dhrd.serve.served_model import load_model

    model, tok, special = make_dual_head(seed=2, head="linear")
    with torch.no_grad():
        model.head.out.weight.normal_(0, 2.0)
    out = make_training_output(tmp_path, model, tok, special)
    export_lean(out, str(tmp_path / "lean"))
    export_hf(out, str(tmp_path / "hf"))
    lean, hf = load_model(tmp_path / "lean"), load_model(tmp_path / "hf")
    assert (hf.format, hf.task, hf.labels) == ("hf", lean.task, lean.labels)
    assert [hf.render(r) for r in ROWS] == [lean.render(r) for r in ROWS]
    texts = TEXTS[:3]  # within the training max_input_len (longer ones are cut only by lean)
    assert float((hf.predict(texts) - lean.predict(texts)).abs().max()) < 1e-5


# ---------------------------------------------------------------------------------------
# Batching and model errors, in process over a fake model (fast and deterministic).

@pytest.fixture
def fake_server():
    from dhrd.serve.http import ServeConfig

    model = FakeModel()
    with app_server(model, ServeConfig(model_dir="fake", max_batch_size=6, max_wait_ms=20)) as (port, _):
        model.batches.clear()  # the warm-up batch
        yield port, model


def test_concurrent_requests_share_batches_and_a_model_error_is_a_500(fake_server):
    port, model = fake_server
    texts = ["x" * n for n in range(1, 13)]

    def one(i):
        return call(port, "POST", "/v1/classify", {"texts": texts[i:i + 1 + i % 3]})

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(one, range(12)))
    for i, (status, reply) in enumerate(replies):
        assert status == 200
        want = [min(len(t), 10) / 10 for t in texts[i:i + 1 + i % 3]]
        assert [p["probs"]["long"] for p in reply["predictions"]] == pytest.approx(want)
    assert max(map(len, model.batches)) > 3 and all(len(b) <= 6 for b in model.batches)
    assert len(model.batches) < len(replies)

    with ThreadPoolExecutor(2) as pool:  # a bad batch fails its requests, not the server
        boom = pool.submit(call, port, "POST", "/v1/classify", {"texts": ["boom"]})
        status, reply = boom.result()
    assert status == 500 and "RuntimeError: exploded on purpose" in reply["error"]
    status, reply = call(port, "POST", "/v1/classify", {"texts": ["xxxxx"]})
    assert status == 200 and reply["predictions"][0]["probs"]["long"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------
# Directories that cannot be served.

@pytest.mark.parametrize("kind", ["empty", "garbage config", "causal LM", "lean without head", "missing"])
def test_unservable_directory_exits_2_with_one_line(tmp_path, tiny_model_dir, lean_dir, kind):
    import shutil

    from dhrd.fileio import free_port

    path = tmp_path / "model"
    if kind in ("empty", "garbage config"):
        path.mkdir()
    if kind == "garbage config":
        (path / "config.json").write_text("{not json")
    if kind == "causal LM":
        path = tiny_model_dir
    if kind == "lean without head":
        shutil.copytree(lean_dir, path)
        os.remove(path / "classifier_head.safetensors")
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.run(serve_cmd(path, "--port", port), cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"dhrd serve: error: {path}"), \
        proc.stderr
    assert time.monotonic() - t0 < 30
    with socket.socket() as s:  # never bound
        s.bind(("127.0.0.1", port))


def test_serve_is_a_dhrd_command(capsys):
    from dhrd.cli import main

    assert main(["--help"]) == 0
    assert "HTTP service for batch classification" in capsys.readouterr().out


def test_bad_limits_are_refused():
    proc = subprocess.run(serve_cmd("anything", "--max_batch_size", "0"), cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "dhrd serve: error: --max_batch_size must be > 0, got 0"
