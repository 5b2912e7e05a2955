"""Shared fixtures (the helpers they use live in tests/helpers.py)."""

from __future__ import annotations

import pytest

from tests.helpers import ARCHS, TINY_VOCAB, make_tiny_tokenizer, tiny_backbone, tiny_config  # noqa: F401


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama + tokenizer saved as a plain HF directory (what users point --model at)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_backbone("llama").save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


# Tests a developer may skip locally with ``pytest -m "not slow"`` (CI runs everything):
# real multi-process DeepSpeed launches, the Slurm cluster, whole trainings in a subprocess.
SLOW_DIRS = ("distributed", "slurm")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(f"tests/{d}/" in item.nodeid for d in SLOW_DIRS):
            item.add_marker(pytest.mark.slow)
