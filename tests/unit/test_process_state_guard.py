"""tests/conftest.py: a test that leaves process-wide state changed fails, and the global RNGs are
seeded per test (so a test sees the same numbers whatever ran before it)."""

import re
from pathlib import Path

import pytest

from wanmoe.runtime import attention

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

INNER = """
import os

import pytest
import torch

from wanmoe.runtime import attention

BASE = torch.get_num_threads()


def test_leaks_threads():
    torch.set_num_threads(BASE + 1)


def test_leaks_env_and_dtype():
    os.environ["WANMOE_TEST_LEAK"] = "1"
    torch.set_default_dtype(torch.float64)


def test_leaks_attention_backend():
    if not hasattr(attention, "set_attention_backend"):
        pytest.skip("wanmoe has no process-wide attention backend")
    attention.set_attention_backend("reference")


def test_restoring_changes_pass(monkeypatch):
    monkeypatch.setenv("WANMOE_TEST_LEAK", "2")
    with torch.no_grad():
        torch.set_num_threads(torch.get_num_threads())


def test_state_was_put_back():
    assert torch.get_num_threads() == BASE and torch.get_default_dtype() == torch.float32
    assert "WANMOE_TEST_LEAK" not in os.environ


def test_draws():
    print("DRAWN", torch.rand(4).tolist())
"""


def test_guard_fails_leaking_tests_and_seeds_per_test(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner=INNER)
    full = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    if hasattr(attention, "set_attention_backend"):
        full.assert_outcomes(passed=6, errors=3)
        assert "wanmoe attention backend: 'auto' -> 'reference'" in full.stdout.str()
    else:
        full.assert_outcomes(passed=5, skipped=1, errors=2)
    out = full.stdout.str()
    assert "torch.get_num_threads()" in out and "os.environ[WANMOE_TEST_LEAK]" in out
    assert "torch.get_default_dtype(): torch.float32 -> torch.float64" in out
    # test_draws after five other tests and alone: the same numbers
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-k", "test_draws")
    alone.assert_outcomes(passed=1)
    drawn = re.findall(r"DRAWN \[[^]]*\]", out)
    assert len(drawn) == 1 and re.findall(r"DRAWN \[[^]]*\]", alone.stdout.str()) == drawn
