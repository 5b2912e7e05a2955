"""Fixtures of tests/slurm: a real local Slurm cluster (munged + slurmctld + two slurmd,
fake nodes n1 and n2 on this host), started once per session by local_cluster.sh and
torn down at the end; plus tiny fixture data.

A plugin the test modules load with ``pytest_plugins = ["tests.slurm.slurm_fixtures"]``, not a
conftest.py: conftest files outside packages all import as module ``conftest``, and a
second one would take that name from tests/conftest.py (``from conftest import ARCHS``
in tests/test_model.py and others would then fail in a whole-suite run).

The cluster needs root (slurmd runs jobs as their user, munged wants its own dirs) and
the Debian packages slurm-wlm + munge, which install_slurm.sh installs when missing.
Without them the tests skip and say why."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
from tests.distributed.train_helpers import child_env, write_model, write_task  # noqa: E402
from tests.slurm.slurm_helpers import write_boolq  # noqa: E402

BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "munged")


def _free_port_block() -> int:
    """A base port P with P, P+1 (slurmctld, slurmd default) and P+101.. free."""
    for _ in range(50):
        base = random.randint(20000, 40000)
        try:
            for p in (base, base + 1, base + 101, base + 102):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port block for the local Slurm cluster")


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: jobs on a real local Slurm cluster (tests/slurm, needs root)")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Environment (dict) in which sbatch/squeue/scontrol talk to the local cluster."""
    if os.geteuid() != 0:
        pytest.skip("tests/slurm start real Slurm daemons: they need root")
    install = subprocess.run(["bash", os.path.join(HERE, "install_slurm.sh")], capture_output=True, text=True)
    if install.returncode != 0:  # root with apt, and the install broke: a real failure
        pytest.fail(f"tests/slurm/install_slurm.sh failed:\n{install.stderr[-3000:]}")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:  # no apt: install_slurm.sh said why
        pytest.skip(f"Slurm binaries missing ({', '.join(missing)}): {install.stderr.strip()}")
    # not under pytest's tmp dir: munged insists that every directory above its socket
    # is world-executable, and pytest's are 0700
    base = tempfile.mkdtemp(prefix="dhrd-slurm-")
    os.chmod(base, 0o755)
    env = dict(os.environ, SLURM_BASE=base, SLURM_NODES="2", SLURM_PORT=str(_free_port_block()))
    script = os.path.join(HERE, "local_cluster.sh")
    start = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"local Slurm cluster did not start:\n{start.stderr[-3000:]}")
    job_env = child_env()
    for k in [k for k in job_env if k.startswith("SLURM_")]:  # not a job of an outer Slurm
        del job_env[k]
    job_env["SLURM_CONF"] = os.path.join(base, "etc", "slurm.conf")
    try:
        yield job_env
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    """Tiny model dir, RTE task files (train_helpers) and BoolQ task files."""
    root = tmp_path_factory.mktemp("slurm-data")
    return {"model": write_model(root / "model"), "rte": write_task(root / "rte"),
            "boolq": write_boolq(root / "boolq"), "root": root}
