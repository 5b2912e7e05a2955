"""Arguments: a JSON/YAML file, overridden by the command line; clear errors."""

import json

import pytest

from dhrd.config import parse_args, resolved_config


def test_yaml_sections_then_cli_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  model: some/dir\n  pooling: mean\nloss:\n  alpha: 0.5\nepochs: 1\n")
    model, data, loss, train, rest = parse_args(["--config", str(cfg), "--epochs", "2", "--local_rank", "0"])
    assert (model.model, model.pooling, loss.alpha, train.epochs) == ("some/dir", "mean", 0.5, 2.0)
    assert rest == ["--local_rank", "0"]
    assert resolved_config(model, data, loss, train)["loss"]["alpha"] == 0.5


def test_json_config_and_unknown_field(tmp_path):
    good = tmp_path / "run.json"
    good.write_text(json.dumps({"task": "cb", "max_seq_len": 256, "pack_tokens": 512}))
    _, data, _, _, _ = parse_args(["--config", str(good)])
    assert (data.task, data.max_seq_len, data.max_input_len) == ("cb", 256, 224)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tsak": "cb"}))
    with pytest.raises(ValueError, match=r"bad.json: unknown field\(s\) tsak"):
        parse_args(["--config", str(bad)])
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "task": \n')
    with pytest.raises(ValueError, match=r"broken.json:3: not valid JSON"):
        parse_args(["--config", str(broken)])


@pytest.mark.parametrize("argv,fragment", [
    (["--pooling", "max"], "argument --pooling: invalid choice: 'max' (choose from 'last', 'mean')"),
    (["--lm_sections", "everything"], "argument --lm_sections/--lm-sections: invalid choice: 'everything'"),
    (["--rationale_fraction", "1.5"], "rationale_fraction=1.5"),
    (["--max_seq_len", "4096", "--pack_tokens", "1024"], "pack_tokens=1024 must be >= max_seq_len=4096"),
    (["--alpha", "0", "--beta", "0"], "not both 0"),
])
def test_invalid_values_are_named(argv, fragment):
    with pytest.raises(ValueError) as err:
        parse_args(argv)
    assert fragment in str(err.value)


def test_model_given_as_a_gguf_file_is_split(tmp_path, monkeypatch):
    """``--model DIR/x.gguf`` is ``--model DIR --gguf_file x.gguf`` (what transformers loads);
    a directory, a hub name or a missing file stays as given (preflight names the last)."""
    (tmp_path / "x.gguf").write_bytes(b"")
    m, *_ = parse_args(["--model", str(tmp_path / "x.gguf")])
    assert (m.model, m.gguf_file) == (str(tmp_path), "x.gguf")
    m, *_ = parse_args(["--model", str(tmp_path / "x.gguf"), "--gguf_file", "x.gguf"])  # both, agreeing
    assert (m.model, m.gguf_file) == (str(tmp_path), "x.gguf")
    monkeypatch.chdir(tmp_path)
    m, *_ = parse_args(["--model", "x.gguf"])
    assert (m.model, m.gguf_file) == (".", "x.gguf")
    for model in (str(tmp_path), "org/name", str(tmp_path / "absent.gguf")):
        m, *_ = parse_args(["--model", model])
        assert (m.model, m.gguf_file) == (model, None)
    with pytest.raises(ValueError, match="--gguf_file y.gguf names another"):
        parse_args(["--model", str(tmp_path / "x.gguf"), "--gguf_file", "y.gguf"])


def test_typed_choices_are_checked_from_a_file_and_in_code(tmp_path):
    """argparse checks a Literal field's value on the command line; a --config file's value
    and a dataclass built in code go through check_choices, with the same field named."""
    from dhrd.config import DataArgs, LossArgs, ModelArgs

    cfg = tmp_path / "run.yaml"
    cfg.write_text("loss: {alpha_schedule: sawtooth}\n")
    with pytest.raises(ValueError, match="alpha_schedule='sawtooth' is not one of constant, linear, cosine, step"):
        parse_args(["--config", str(cfg)])
    with pytest.raises(ValueError, match="head='wide' is not one of linear, mlp"):
        ModelArgs(head="wide")
    with pytest.raises(ValueError, match="label_consistency='maybe' is not one of keep, drop, drop_example"):
        DataArgs(label_consistency="maybe")
    assert LossArgs(method=None).method is None  # Optional[Literal]: None allowed
    with pytest.raises(ValueError, match="method='dhrd2' is not one of dhrd, dhrd_paper"):
        LossArgs(method="dhrd2")
