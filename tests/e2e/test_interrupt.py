"""Ctrl-C (SIGINT) while parsing, loading or denoising: the process ends within 2 s, prints
"interrupted", exits 130 and leaves no output file, temp file or new folder behind."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
LIMIT_S = 2.0


class _Proc:
    """A child process whose stderr is collected by a thread (tqdm writes '\\r' updates)."""

    def __init__(self, argv) -> None:
        self.p = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        while chunk := self.p.stderr.read1(4096):
            self.err += chunk

    def wait_for(self, text: bytes, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while text not in self.err:
            assert self.p.poll() is None, f"exited early: {self.err.decode(errors='replace')}"
            assert time.monotonic() < end, f"never saw {text!r}: {self.err[-2000:]!r}"
            time.sleep(0.02)

    def interrupt(self) -> tuple[int, float, str]:
        t0 = time.monotonic()
        self.p.send_signal(signal.SIGINT)
        try:
            rc = self.p.wait(timeout=10)
        finally:
            if self.p.poll() is None:
                self.p.kill()
        took = time.monotonic() - t0
        self._t.join(timeout=5)
        return rc, took, self.err.decode(errors="replace")


def _generate(a14b_dir, out: Path, *extra) -> _Proc:
    return _Proc([sys.executable, "-m", "wanmoe", "generate", "a red ball", "--ckpt-dir", str(a14b_dir),
                  "--size", "64*64", "--frames", "5", "--device", "cpu", "--out", str(out), *extra])


def _assert_clean_stop(rc, took, err, out: Path) -> None:
    assert rc == 130, err
    assert took < LIMIT_S, f"took {took:.2f} s to stop"
    assert "interrupted" in err and "Traceback" not in err, err
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("phase,marker,extra", [
    ("loading", b"model: ", ["--steps", "2", "--quiet"]),
    ("denoising", b"denoise:", ["--steps", "1000"]),
])
def test_sigint_during_run(a14b_dir, tmp_path, phase, marker, extra):
    out = tmp_path / "new" / "o.mp4"
    proc = _generate(a14b_dir, out, *extra)
    proc.wait_for(marker)
    if phase == "denoising":
        proc.wait_for(b"1/1000")
    _assert_clean_stop(*proc.interrupt(), out)
    assert not (tmp_path / "new").exists()


def test_sigint_while_parsing_headers(a14b_dir, tmp_path, monkeypatch):
    """SIGINT once the CLI has started reading headers (slowed so the signal lands there)."""
    out = tmp_path / "o.mp4"
    script = textwrap.dedent(f"""
        import sys, time
        import wanmoe.loading.safetensors_header as h
        real = h.read_header
        def slow(path):
            sys.stderr.write("parsing\\n"); sys.stderr.flush()
            time.sleep(0.5)
            return real(path)
        h.read_header = slow
        from wanmoe.cli import run
        run(["generate", "x", "--ckpt-dir", {str(a14b_dir)!r}, "--size", "64*64",
             "--frames", "5", "--device", "cpu", "--out", {str(out)!r}])
    """)
    proc = _Proc([sys.executable, "-c", script])
    proc.wait_for(b"parsing")
    _assert_clean_stop(*proc.interrupt(), out)


def test_watchdog_ends_a_main_thread_that_never_returns(tmp_path):
    """The main thread ignores SIGINT (as if stuck in a long C call): the guard still exits 130
    within the grace time and runs its cleanups."""
    marker = tmp_path / "partial.tmp"
    script = textwrap.dedent(f"""
        import pathlib, signal, sys, time
        from wanmoe.interrupt import InterruptGuard
        marker = pathlib.Path({str(marker)!r})
        marker.write_text("x")
        with InterruptGuard(grace=1.0, cleanups=[lambda: marker.unlink()]):
            signal.signal(signal.SIGINT, lambda *a: None)  # the main thread never reacts
            sys.stderr.write("ready\\n"); sys.stderr.flush()
            time.sleep(60)
    """)
    proc = _Proc([sys.executable, "-c", script])
    proc.wait_for(b"ready")
    rc, took, err = proc.interrupt()
    assert rc == 130 and "interrupted" in err and took < LIMIT_S, (rc, took, err)
    assert not marker.exists()
