"""dhrd.logs: the rank prefix on every line, the level filter (argument and
DHRD_LOG_LEVEL), one handler however often the entry points set it up, and nothing
configured by importing the package."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from dhrd import logs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clean_logger(monkeypatch):
    """Each test starts, and leaves, the ``dhrd`` logger as an import leaves it."""
    def reset():
        logger = logging.getLogger("dhrd")
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True

    monkeypatch.setattr(logs, "_rank", None)
    monkeypatch.delenv("DHRD_LOG_LEVEL", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    reset()
    yield
    reset()


def test_every_line_carries_the_rank(monkeypatch, capsys):
    logs.setup()
    log = logging.getLogger("dhrd.engine.trainer")
    log.info("before the process group")
    monkeypatch.setenv("RANK", "2")  # a launcher's variable, until the engine knows better
    log.info("launched")
    logs.set_rank(3)
    log.warning("data report:\n  examples 10")
    assert capsys.readouterr().err == ("[rank0] before the process group\n[rank2] launched\n"
                                       "[rank3] data report:\n[rank3]   examples 10\n")


def test_the_level_filters(monkeypatch, capsys):
    log = logging.getLogger("dhrd.jsonl")
    logs.setup("WARNING")
    log.info("hidden")
    log.warning("shown")
    monkeypatch.setenv("DHRD_LOG_LEVEL", "error")
    logs.setup()  # set up again (train_main in-process, twice): replaced, not doubled
    log.warning("hidden too")
    log.error("an error")
    assert capsys.readouterr().err == "[rank0] shown\n[rank0] an error\n"
    assert len(logging.getLogger("dhrd").handlers) == 1
    monkeypatch.setenv("DHRD_LOG_LEVEL", "loud")  # a typo: INFO, and says so
    logs.setup()
    log.info("info")
    assert capsys.readouterr().err == ("[rank0] warning: log level 'loud' is not DEBUG, INFO, WARNING or ERROR; "
                                       "using INFO\n[rank0] info\n")


def test_importing_configures_nothing():
    """A library must leave logging to the application: importing dhrd (the entry points
    and the modules that log included) adds no handler and sets no level anywhere."""
    code = ("import logging, dhrd, dhrd.logs, dhrd.cli, dhrd.train, dhrd.jsonl, dhrd.engine.trainer, "
            "dhrd.teacher.generate_cli\n"
            "d = logging.getLogger('dhrd')\n"
            "print(logging.getLogger().handlers, d.handlers, d.level, d.propagate)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "[] [] 0 True", proc.stdout
