"""Shared fixtures: the zoo models and builtin splits, built once per session.

The suite keeps its own advkit cache (zoo weights, parsed builtin data) in
``.pytest-advkit-cache/`` at the repository root (git-ignored), so it never reads or
writes the user's ``~/.cache/advkit`` and repeated local runs reuse the trained models.
``ADVKIT_TEST_CACHE`` points it elsewhere. Set before advkit is imported, and inherited
by the ``advkit`` subprocesses the tests start.

Torch runs one thread per process (``OMP_NUM_THREADS``, unless already set): the suite's
models are tiny, and on a shared 2-core machine a second thread per process made training
steps ten times slower, not faster. Subprocesses inherit it, so a step computed there
gives the same numbers as in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

TEST_CACHE = Path(os.environ.get("ADVKIT_TEST_CACHE") or Path(__file__).resolve().parent.parent / ".pytest-advkit-cache")
os.environ["ADVKIT_CACHE"] = str(TEST_CACHE)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from advkit.data import Dataset, load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


@pytest.fixture(scope="session")
def digits_model():
    return pretrained("digits-cnn")


@pytest.fixture(scope="session")
def digits_test() -> Dataset:
    return load_dataset("digits", split="test")


@pytest.fixture(scope="session")
def digits_train() -> Dataset:
    return load_dataset("digits", split="train")


@pytest.fixture(scope="session")
def mnist_model():
    return pretrained("mnist-cnn")


@pytest.fixture(scope="session")
def mnist_test() -> Dataset:
    return load_dataset("mnist5k", split="test")


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's TerminalReporter
    """Name the outcome of every ``@pytest.mark.shown`` test, so a quiet (-q) CI log shows it ran."""
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "shown" in getattr(report, "keywords", {}) and (report.when == "call" or outcome != "passed"):
                terminalreporter.write_line(f"{outcome.upper()} {report.nodeid}")
