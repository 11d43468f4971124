"""Ctrl-C that works while the main thread is inside a long C call (a torch op, a file read).

Python runs its SIGINT handler (which raises `KeyboardInterrupt`) only between bytecodes of the
main thread, so an interrupt during one long kernel waits for the kernel. `InterruptGuard`
registers a wakeup fd (`signal.set_wakeup_fd`): the C-level handler writes the signal number to
it at once, and a watcher thread reading the other end sees every SIGINT. Normally the main
thread then raises `KeyboardInterrupt`, unwinds (temp files removed by their `finally`) and
`cli.main` prints "interrupted" and returns 130. If it has not finished within `grace` seconds,
the watcher runs the registered cleanups (e.g. `OutputPlan.cleanup`), prints "interrupted" and
ends the process with status 130 (`os._exit`: nothing else would stop it).

Limit: a C call that holds the GIL for longer than `grace` also blocks the watcher; torch
kernels and file reads release it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class InterruptGuard:
    """Context manager: a SIGINT ends the process within `grace` seconds, cleanups run first."""

    def __init__(self, grace: float = 1.5, cleanups: list[Callable[[], None]] | None = None) -> None:
        self.grace = grace
        self.cleanups = list(cleanups or [])
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._socks: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        self.cleanups.append(fn)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are only delivered to the main thread; nothing to guard
        r, w = socket.socketpair()
        r.setblocking(True)
        w.setblocking(False)
        self._socks = (r, w)
        self._old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="wanmoe-interrupt", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        r = self._socks[0]
        while not self._done.is_set():
            try:
                data = r.recv(64)
            except OSError:
                return
            if not data or self._done.is_set():
                return
            if signal.SIGINT in data and not self._done.wait(self.grace):
                self._hard_exit()

    def _hard_exit(self) -> None:
        for fn in self.cleanups:
            try:
                fn()
            except OSError:
                pass  # best effort: the process is ending either way
        os.write(2, b"\ninterrupted\n")
        os._exit(EXIT_INTERRUPTED)

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._socks is None:
            return
        signal.set_wakeup_fd(self._old_fd)
        r, w = self._socks
        try:
            w.send(b"\0")  # wake the watcher so it sees `_done`
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        r.close()
        w.close()
        self._socks = None
