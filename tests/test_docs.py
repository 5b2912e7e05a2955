"""Every command shown in README.md and docs/ still parses: each ``--flag`` it passes is
one its entry point's ``--help`` names (the demo, the ``dhrd`` verbs, dhrd/train.py under
python / deepspeed / torchrun, the tools/ scripts), and every script or file it names
exists. Commands rot silently otherwise: a renamed flag leaves a README that fails on a
newcomer's first copy."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import runpy
import shlex
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
SHELL_FENCES = ("", "bash", "sh", "shell", "console")


def shell_commands(path: str) -> list[tuple[int, list[str]]]:
    """(line, argv) of each command in the page's shell code blocks (and inline code that
    starts with one of our entry points): continuation lines
    joined, comments dropped, ``&&`` / ``;`` / ``|`` chains split, ``VAR=x`` prefixes removed."""
    out, block, start, fence = [], None, 0, None
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines, 1):
        m = re.match(r"^\s*```(\w*)\s*$", line)
        if m and block is None:
            block, start, fence = [], i, m.group(1)
            continue
        if m and block is not None:
            if fence in SHELL_FENCES:
                out += _split(start, block)
            block = None
            continue
        if block is not None:
            block.append(line)
        else:  # inline code in prose: `dhrd predict DIR --input x.jsonl`
            for span in re.findall(r"`([^`]+)`", line):
                if re.match(r"^(dhrd |python -m dhrd|python (tools|dhrd)/|deepspeed )", span):
                    out += _split(i - 1, [span])
    return out


def _split(start: int, block: list[str]) -> list[tuple[int, list[str]]]:
    text = re.sub(r"\\\n\s*", " ", "\n".join(block))
    cmds = []
    for offset, line in enumerate(text.split("\n")):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue  # not a shell line (a layout tree, a table)
        argv: list[str] = []
        for tok in tokens + ["&&"]:
            if tok in ("&&", ";", "|", "||"):
                while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
                    argv.pop(0)
                if argv:
                    cmds.append((start + 1 + offset, argv))
                argv = []
            else:
                argv.append(tok)
    return cmds


def entry_point(argv: list[str]) -> tuple[str, list[str], list[str]] | None:
    """(what to ask for --help, its leading argv, the arguments to check) or None when the
    command is not one of ours (pip, git, sbatch's own flags, ...)."""
    prog = argv[0]
    if prog in ("python", "python3") and argv[1:2] == ["-m"] and argv[2].startswith("dhrd"):
        return argv[2], [], argv[3:]
    if prog == "dhrd":
        verbs = []
        for a in argv[1:]:
            if a.startswith("-") or len(verbs) == (2 if argv[1] in ("experiment", "rationales") else 1):
                break
            verbs.append(a)
        return "dhrd.cli", verbs, argv[1 + len(verbs):]
    script = next((a for a in argv[1:] if a.endswith(".py")), None) if prog in (
        "python", "python3", "deepspeed", "torchrun") else None
    if script and (script.startswith(("tools/", "dhrd/"))):
        return script, [], argv[argv.index(script) + 1:]
    return None


_HELP: dict[tuple, str] = {}


def help_text(target: str, lead: list[str]) -> str:
    """The --help output of an entry point, run in this process (torch imported once)."""
    key = (target, tuple(lead))
    if key in _HELP:
        return _HELP[key]
    out = io.StringIO()
    old_argv = sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            if target.endswith(".py"):
                sys.argv = [target, *lead, "--help"]
                runpy.run_path(os.path.join(REPO, target), run_name="__main__")
            else:
                import importlib

                importlib.import_module(target).main([*lead, "--help"])
    except SystemExit:
        pass  # argparse's --help exits 0
    finally:
        sys.argv = old_argv
    _HELP[key] = out.getvalue()
    return _HELP[key]


def _cases():
    for page in PAGES:
        for line, argv in shell_commands(page):
            ep = entry_point(argv)
            if ep:
                yield pytest.param(page, line, argv, ep, id=f"{os.path.relpath(page, REPO)}:{line}")


CASES = list(_cases())


def test_the_pages_show_commands_of_ours():
    assert len(CASES) >= 20  # the parser finds the README's and docs' commands


@pytest.mark.parametrize("page,line,argv,ep", CASES)
def test_every_documented_command_parses(page, line, argv, ep):
    target, lead, args = ep
    if target.endswith(".py"):
        assert os.path.exists(os.path.join(REPO, target)), f"{page}:{line}: no such script {target}"
    text = help_text(target, lead)
    assert text.strip(), f"{page}:{line}: {target} {' '.join(lead)} --help printed nothing"
    if "--" in args:
        args = args[:args.index("--")]  # what follows goes to another program
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]
    unknown = [f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", text)]
    assert not unknown, f"{page}:{line}: `{shlex.join(argv)}`: {target} {' '.join(lead)} has no {', '.join(unknown)}"


def test_scripts_and_configs_named_in_commands_exist():
    missing = []
    for page in PAGES:
        for line, argv in shell_commands(page):
            for a in argv:
                if re.match(r"^(slurm|tools|ds_configs|experiments)/[\w./-]+\.(sh|py|json|yaml)$", a) and \
                        not os.path.exists(os.path.join(REPO, a)):
                    missing.append(f"{os.path.relpath(page, REPO)}:{line}: {a}")
    assert not missing, missing


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        with open(page, encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
            if not os.path.exists(path):
                broken.append(f"{os.path.relpath(page, REPO)}: {target}")
    assert not broken, broken
