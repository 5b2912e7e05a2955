"""The dhrd console script: tasks listing, the data dry run, clear errors."""

import json

import pytest

from dhrd.cli import main


def test_tasks_listing(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("boolq", "cb", "copa", "multirc", "rte", "wic", "wsc", "esnli", "anli1", "cqa"):
        assert f"\n{name} " in "\n" + out
    assert "macro_f1, accuracy" in out and "f1a, em" in out


def test_data_dry_run_reports_everything(tmp_path, tiny_model_dir, capsys):
    train = tmp_path / "rte.jsonl"
    rows = [{"premise": f"premise {i}", "hypothesis": "hypothesis", "idx": i,
             "label": "entailment" if i % 2 else "not_entailment"} for i in range(6)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rats = tmp_path / "r.jsonl"
    rats.write_text(json.dumps({"id": "1", "rationale": "because"}) + "\n"
                    + json.dumps({"id": "99", "rationale": "stray"}) + "\n")
    code = main(["data", "--task", "rte", "--model", str(tiny_model_dir), "--train_file", str(train),
                 "--rationale_file", str(rats), "--max_seq_len", "128", "--pack_tokens", "256"])
    out = capsys.readouterr().out
    assert code == 0
    assert "examples_used" in out and "skipped/rationale_unknown_id  1" in out
    assert "examples_without_rationale    5" in out and "efficiency" in out


def test_data_dry_run_names_bad_line(tmp_path, tiny_model_dir, capsys):
    train = tmp_path / "rte.jsonl"
    train.write_text('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n'
                     '{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 1}\n')
    code = main(["data", "--task", "rte", "--model", str(tiny_model_dir), "--train_file", str(train)])
    assert code == 2
    err = capsys.readouterr().err
    assert "rte.jsonl:2" in err and "field 'label'" in err and "maybe" in err


def test_data_dry_run_applies_the_method_preset(tmp_path, tiny_model_dir, capsys):
    """--method pooled reads no rationales (as training), so a missing rationale file is
    no error and nothing is counted for them; dhrd reads it and names the missing file."""
    train = tmp_path / "rte.jsonl"
    train.write_text("".join(json.dumps({"premise": f"p {i}", "hypothesis": "h", "idx": i, "label": "entailment"})
                             + "\n" for i in range(4)))
    args = ["data", "--task", "rte", "--model", str(tiny_model_dir), "--train_file", str(train),
            "--rationale_file", str(tmp_path / "missing.jsonl"), "--max_seq_len", "128", "--pack_tokens", "256"]
    assert main(args + ["--method", "pooled"]) == 0
    out = capsys.readouterr().out
    assert "rationales_read" not in out and "examples_used" in out
    assert main(args + ["--method", "dhrd"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(args + ["--method", "bogus"]) == 2
    assert "argument --method: invalid choice: 'bogus'" in capsys.readouterr().err


def test_rationales_commands_report_errors_as_one_line(tmp_path, capsys):
    rows = tmp_path / "rte.jsonl"
    rows.write_text(json.dumps({"premise": "p", "hypothesis": "h", "idx": 0, "label": "entailment"}) + "\n")
    bad = tmp_path / "r.jsonl"
    bad.write_text(json.dumps({"id": "0", "rationale": "fine"}) + "\n" + json.dumps({"id": "1", "rationale": 5}) + "\n")
    assert main(["rationales", "check", "--task", "rte", "--input", str(rows), "--rationales", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"dhrd rationales check: error: {bad}:2: field 'rationale': "
                                        "expected a string, got int"]
    assert main(["rationales", "import", "--task", "esnli", "--root", str(tmp_path / "none"), "--split", "valid",
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "dhrd rationales import: error:" in err and "esnli_valid.json" in err and "Traceback" not in err


def test_rationales_check_fails_where_training_would(tmp_path, capsys):
    """check reads with the training reader first: a file training rejects is rejected."""
    rows = tmp_path / "rte.jsonl"
    rows.write_text(json.dumps({"premise": "p", "hypothesis": "h", "idx": 0, "label": "entailment"}) + "\n")
    base = ["rationales", "check", "--task", "rte", "--input", str(rows), "--rationales"]
    for name, content, message in [("t.jsonl", '{"id": "0", "rationale": "ok"}\n{"id": "1", "rati', "t.jsonl:2"),
                                   ("s.jsonl", '{"id": "0", "rationale": "\\ud800"}\n', "s.jsonl:1")]:
        (tmp_path / name).write_text(content)
        assert main(base + [str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err
    good = tmp_path / "g.jsonl"
    good.write_text('{"id": "0", "rationale": "ok"}\n')
    assert main(base + [str(good), "--out", str(tmp_path)]) == 2  # a directory: refused before any work
    assert "is a directory" in capsys.readouterr().err and not list(tmp_path.glob("*.tmp-*"))
    assert main(base + [str(good), "--out", str(tmp_path / "kept.jsonl")]) == 0


def test_export_is_a_verb_with_the_tools_scripts_flags(capsys):
    """``dhrd export`` is listed and takes what tools/export_classifier.py (its alias) takes."""
    assert main(["--help"]) == 0
    assert "export" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: dhrd export") and all(f in usage for f in ("--format", "--tag", "--dtype",
                                                                                  "--int8"))
