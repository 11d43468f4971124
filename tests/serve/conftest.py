"""Fixtures of the serve tests; the server process and client are in tests/helpers_serve.py."""

import pytest

from helpers_serve import CHEAP, ServeProcess, ended_lines  # noqa: F401 (re-exported)


@pytest.fixture
def serve_factory(tmp_path):
    """Start servers; each is killed at the end of the test if still running."""
    started = []

    def start(data_dir=None, *args, **kw):
        s = ServeProcess(data_dir or tmp_path / "data", *args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()
