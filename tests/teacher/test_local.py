"""The local HF teacher end to end on a tiny random Llama (its text is gibberish, so it
never writes the end marker: both the strict and the lenient setting are exercised)."""

import pytest

from dhrd.teacher.generate import GenerateConfig, run
from dhrd.teacher.generate_cli import build_parser, main
from dhrd.teacher.local import LocalTeacher, LocalTeacherConfig
from dhrd.teacher.prompts import Prompt
from tests.teacher.teacher_helpers import read_jsonl, write_cb


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    return LocalTeacher(LocalTeacherConfig(str(tiny_model_dir), max_new_tokens=6, batch_size=3, temperature=0))


def test_generation_records_failures_then_retries_them(teacher, tmp_path):
    data = write_cb(tmp_path / "cb.jsonl", 5)
    out = tmp_path / "r.jsonl"
    strict = GenerateConfig("cb", str(data), str(out), progress=False)
    s = run(strict, teacher)
    assert (s.attempted, s.written, dict(s.failed)) == (5, 0, {"no_end_marker": 5})
    failures = read_jsonl(tmp_path / "r.failures.jsonl")
    assert sorted(f["id"] for f in failures) == ["0", "1", "2", "3", "4"]
    assert all(f["reason"] == "no_end_marker" and f["detail"] == "finish_reason=length" for f in failures)
    assert all(f["teacher"] == f"hf:{teacher.name[3:]}" and f["prompt_version"] == "gold-v1" for f in failures)

    s = run(strict, teacher)  # failed ids are skipped on a plain rerun
    assert (s.skipped_failed_before, s.attempted) == (5, 0)

    lenient = GenerateConfig("cb", str(data), str(out), require_end_marker=False, retry_failures=True,
                             progress=False)
    s = run(lenient, teacher)
    assert (s.written, s.recovered, s.completion_tokens) == (5, 5, 30)
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == ["0", "1", "2", "3", "4"]
    for r in rows:
        assert r["rationale"] and r["rationale"] == r["rationale"].strip()
        assert r["teacher_label"] is None and r["gold_label"] in ("entailment", "contradiction", "neutral")
        assert (r["teacher"], r["prompt_version"], r["finish_reason"]) == (teacher.name, "gold-v1", "length")
        assert r["end_marker"] is False
    assert run(lenient, teacher).already_written == 5 and len(read_jsonl(out)) == 5


def test_left_padded_batches_match_single_prompts_and_longest_go_first(teacher):
    prompts = [Prompt("", "short"), Prompt("sys", "a much longer prompt " * 6), Prompt("", "medium size one")]
    batched = list(teacher.generate(prompts))
    assert [i for i, _ in batched] == [1, 2, 0]  # sorted by length, longest first
    teacher.cfg.batch_size = 1
    try:
        single = dict(teacher.generate(prompts))
    finally:
        teacher.cfg.batch_size = 3
    assert {i: c.text for i, c in batched} == {i: c.text for i, c in single.items()}
    assert all(c.completion_tokens == 6 and c.prompt_tokens == len(teacher.encode(prompts[i]))
               for i, c in batched)


def test_a_failing_batch_is_split_down_to_the_bad_prompt(teacher, monkeypatch):
    real = teacher._generate

    def flaky(batch):
        if any(len(ids) > 40 for ids in batch):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(teacher, "_generate", flaky)
    prompts = [Prompt("", "x"), Prompt("", "y" * 200), Prompt("", "z")]
    got = dict(teacher.generate(prompts))
    assert got[1].error.startswith("generation_error: CUDA out of memory") and got[1].text == ""
    assert got[0].error is None and got[2].error is None and got[0].text


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    t = LocalTeacher(LocalTeacherConfig(str(tiny_model_dir)), tokenizer=tok)
    assert t.use_chat
    assert tok.decode(t.encode(Prompt("S", "U"))) == "<system>S<user>U<assistant>"
    plain = LocalTeacher(LocalTeacherConfig(str(tiny_model_dir), chat_template=False), tokenizer=tok)
    assert tok.decode(plain.encode(Prompt("S", "U"))) == "<s>S\n\nU\n"


def test_cli_samples_with_the_paper_settings(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import torch
    from transformers import LlamaForCausalLM

    seen = []
    real = LlamaForCausalLM.generate

    def spy(self, *args, **kw):
        seen.append(kw)
        return real(self, *args, **kw)

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    threads = torch.get_num_threads()
    data = write_cb(tmp_path / "cb.jsonl", 4)
    out = tmp_path / "cli.jsonl"
    try:
        rc = main(["--task", "cb", "--input", str(data), "--out", str(out), "--model", str(tiny_model_dir),
                   "--max_new_tokens", "5", "--no_end_marker_required", "--limit", "3", "--no_progress",
                   "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == ["0", "1", "2"]
    assert "written 3" in capsys.readouterr().err
    kw = seen[0]  # the paper's sampling (T 0.1, top_p 0.7), stopping at the end marker
    assert (kw["do_sample"], kw["temperature"], kw["top_p"], kw["max_new_tokens"]) == (True, 0.1, 0.7, 5)
    assert kw["stop_strings"] == ["[END OF REASONING]"]
    args = build_parser().parse_args(["--task", "cb", "--input", "x", "--out", "y", "--model", "m"])
    assert args.max_new_tokens == 500


def test_model_given_as_a_gguf_file_follows_the_training_rule(tmp_path):
    """``--model DIR/x.gguf`` is the folder plus the file (as `dhrd train` reads it): a missing
    file is named as a GGUF file, and a second, different --gguf_file is refused."""
    from dhrd.teacher.local import LocalTeacher, LocalTeacherConfig

    with pytest.raises(FileNotFoundError, match=r"nope\.gguf: no such GGUF file"):
        LocalTeacher(LocalTeacherConfig(model=str(tmp_path / "nope.gguf")))
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="is a GGUF file and --gguf_file other.gguf names another"):
        LocalTeacher(LocalTeacherConfig(model=str(tmp_path / "m.gguf"), gguf_file="other.gguf"))
