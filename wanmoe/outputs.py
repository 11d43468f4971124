"""Output files: written atomically with ordinary permissions, probed before any weight loads.

`atomic_path(path)` yields a temporary name in the target folder; the target appears (or an
existing one is replaced) only when the body succeeded, by `os.replace`, so a reader never sees
half a file and a failed run leaves the old file in place. `mkstemp` creates files with mode 0600;
the finished file gets the mode a plain `open()` would have given it (0666 minus the umask, or the
mode of the file it replaces).

`OutputPlan` holds the files one `generate` run writes: `probe()` checks before any weight loads
that each can be created (a temp file is created and removed in the nearest existing folder),
without creating folders; `write()` creates missing folders, writes every file to a temp name
and renames them into place only when all of them were written, removing what it created on
failure.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

PARTIAL_TAG = ".wanmoe-partial-"  # in every temp name, so leftovers can be found and removed


def current_umask() -> int:
    """The process umask (read from /proc on Linux, else set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode(target: Path) -> int:
    """Mode for a file about to become `target`: the replaced file's, else 0666 & ~umask."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def temp_name(path: Path, suffix: str) -> Path:
    """A fresh temp file beside `path` (created empty, mode 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_TAG}", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def partial_files(path: Path) -> list[Path]:
    """Temp files of `path` left in its folder (by an interrupted or killed writer)."""
    folder = Path(path).parent
    if not folder.is_dir():
        return []
    # ".*": also the temp files of writers that were handed a temp name themselves
    return sorted(folder.glob(f".*{Path(path).name}{PARTIAL_TAG}*"))


@contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, suffix or path.suffix)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _missing_dirs(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def probe_writable(path: Path, flag: str) -> None:
    """InputError unless a file can be created where `path` goes (no folder is created)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a folder; give a file name")
    folder = _nearest_existing(path.resolve().parent)
    if not folder.is_dir():
        raise InputError(f"{flag} {str(path)!r}: {folder} is not a folder, so the file cannot be written")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_TAG}probe-", dir=folder)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise InputError(f"{flag} {str(path)!r} cannot be written: creating a file in {folder} "
                         f"fails ({why})") from None
    os.close(fd)
    os.unlink(tmp)
    if path.exists() and not os.access(path.parent, os.W_OK):
        raise InputError(f"{flag} {str(path)!r} exists and its folder is read-only")


class OutputPlan:
    """The files one run writes (flag -> path): probed up front, committed all together."""

    def __init__(self, outputs: dict[str, Path | None]) -> None:
        self.outputs = {flag: Path(p) for flag, p in outputs.items() if p is not None}
        self._staged: list[Path] = []

    def probe(self) -> None:
        """Before any weight loads: every output can be created (folders are not created yet)."""
        seen: dict[Path, str] = {}
        for flag, path in self.outputs.items():
            key = path.resolve()
            if key in seen:
                raise InputError(f"{flag} and {seen[key]} name the same file {str(path)!r}")
            seen[key] = flag
            probe_writable(path, flag)

    def write(self, writers: dict[str, Callable[[Path], object]]) -> None:
        """Run writer(temp_path) for each flag, then rename every temp file onto its target."""
        created: list[Path] = []
        for path in self.outputs.values():
            for d in reversed(_missing_dirs(path.parent)):
                d.mkdir()
                created.insert(0, d)
        done: list[tuple[Path, Path]] = []
        try:
            for flag, write in writers.items():
                path = self.outputs[flag]
                tmp = temp_name(path, path.suffix)
                self._staged.append(tmp)
                write(tmp)
                os.chmod(tmp, new_file_mode(path))
                done.append((tmp, path))
            for tmp, path in done:
                os.replace(tmp, path)
        except BaseException:
            self.cleanup()
            for d in created:  # deepest first; only folders this call made and left empty
                try:
                    d.rmdir()
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        raise
            raise
        finally:
            self._staged.clear()

    def cleanup(self) -> None:
        """Remove temp files of this plan (also those left by a writer's own temp names)."""
        for tmp in list(self._staged):
            tmp.unlink(missing_ok=True)
        for path in self.outputs.values():
            for tmp in partial_files(path):
                tmp.unlink(missing_ok=True)
