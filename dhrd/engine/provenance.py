"""What code and environment trained a run, recorded in its ``config.json``: the git
commit (and whether the work tree had uncommitted changes), the versions of the libraries
that decide the numbers, the host and the command. A grid spans days and commits; a
result is only comparable with another when both say what produced them."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("torch", "transformers", "deepspeed", "peft", "datasets", "tokenizers", "numpy")


def git_state(path: str = REPO) -> dict | None:
    """{'commit', 'dirty'} of the checkout holding ``path``; None outside git (an
    installed wheel) or without a git binary."""
    def git(*args):
        return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    from .. import __version__

    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dhrd": __version__, "git": git_state(), "python": platform.python_version(),
            "packages": versions(), "host": socket.gethostname(), "argv": list(sys.argv)}


def with_history(new_env: dict, previous_config: dict | None) -> dict:
    """``{'environment': new_env, 'earlier_starts': [...]}``: a resumed run keeps what
    trained its first steps (an older commit, another host) next to what trains it now."""
    earlier = []
    if previous_config:
        earlier = list(previous_config.get("earlier_starts") or [])
        if previous_config.get("environment"):
            earlier.append(previous_config["environment"])
    return {"environment": new_env, "earlier_starts": earlier}
