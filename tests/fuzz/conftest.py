"""Fuzz tests: a shared temp folder and a one-line count of the mutated files at the end."""

from pathlib import Path

import pytest
from fuzzlib import COUNTS, OUTCOMES


@pytest.fixture(scope="session")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        total = sum(COUNTS.values())
        parts = ", ".join(f"{k} {v} ({OUTCOMES[k]['loaded']} loaded, {OUTCOMES[k]['refused']} refused)"
                          for k, v in sorted(COUNTS.items()))
        terminalreporter.write_line(f"fuzz: {total} mutated files: {parts}")
