"""Shared fixtures. Tests use real components: real recipes, real ONNX Runtime sessions, real files."""

from __future__ import annotations

import os

import pytest

# Two test workers share two cores: keep each runtime and torch to one thread so they do not
# oversubscribe the machine (results do not depend on thread counts).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def run_cli(capsys):
    """Run the real `edgeforge` CLI in-process; returns (exit code, stdout, stderr)."""
    from edgeforge.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
