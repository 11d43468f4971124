"""`--queue SPEC` -> a JobStore: SQLite in the data dir by default, or a shared PostgreSQL queue."""

from __future__ import annotations

from pathlib import Path

from wanmoe.errors import InputError

DEFAULT_DB = "jobs.sqlite3"  # DATA/jobs.sqlite3 (serve contract)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(spec: str | None, data_dir):
    """The job store that `wanmoe serve --queue SPEC` names.

    - None or "" -> SQLite at DATA_DIR/jobs.sqlite3 (one server; the default)
    - "sqlite:PATH" -> SQLite at PATH (relative paths are relative to the working directory)
    - "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB" (or postgres://) -> a PostgreSQL queue that
      several servers and workers on several machines share (needs `wanmoe[postgres]`)
    Anything else raises InputError naming the value and the forms allowed.
    """
    if spec is None or spec == "":
        from wanmoe.serve.store import SQLiteStore

        return SQLiteStore(Path(data_dir) / DEFAULT_DB)  # as store.open_store(data_dir)
    if not isinstance(spec, str):
        raise InputError(f"--queue {spec!r} must be a string")
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if path.startswith("//"):  # sqlite:///abs/path or sqlite://rel -> a plain path
            path = path[2:]
        if not path:
            raise InputError("--queue sqlite: needs a file path, e.g. sqlite:/srv/wanmoe/jobs.sqlite3")
        from wanmoe.serve.store import SQLiteStore

        return SQLiteStore(Path(path))
    if spec.startswith(POSTGRES_SCHEMES):
        from wanmoe.serve.store_postgres import PostgresStore

        return PostgresStore(spec)
    from wanmoe.serve.store_postgres import redact_dsn

    raise InputError(f"--queue {redact_dsn(spec)!r} must be sqlite:PATH or postgresql://USER@HOST:PORT/DB "
                     "(default: SQLite in the data dir)")
