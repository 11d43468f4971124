"""The HTTP API of `wanmoe serve` on the standard library's `ThreadingHTTPServer`.

Routes (docs/serve.md; the schema is `wanmoe.serve.openapi.schema()`, served at /openapi.json):

    POST   /v1/jobs                  submit -> 201 job (+ "warnings"); 422 invalid; 429 queue full
    POST   /v1/check                 the same validation, nothing queued -> {"request", "warnings"}
    GET    /v1/jobs?limit=&offset=   {"jobs": [...newest first], "total": n}
    GET    /v1/jobs/{id}             the job
    DELETE /v1/jobs/{id}             cancel (queued: at once; running: within one step)
    GET    /v1/jobs/{id}/video       video/mp4 (404 until it exists; single byte ranges)
    GET    /v1/jobs/{id}/events      text/event-stream: "progress" on every change, then "done"
    GET    /v1/model                 model, defaults, limits, presets, sizes, vocabulary
    GET    /v1/health                {"ok": true, ...} (never needs the token)
    GET    /openapi.json             OpenAPI 3 schema
    GET    /, /static/...            the web page (wanmoe/serve/static/)

Ids: anything that is not 32 lowercase hex characters is a 404 before any file or row is
looked up; files are only ever named `<id>.mp4` / `<id>.ckpt` inside the data dir. Paths are
matched raw (never URL-decoded or normalised), so `/v1/jobs/../x` and `%2e%2e` match nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import InputError
from .jobs import normalise, parse_body
from .store import TERMINAL, QueueFull, QueueUnavailable, is_job_id

log = logging.getLogger("wanmoe.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20  # bytes of a POST body; a prompt is at most 100k characters
MAX_PAGE = 500  # the largest ?limit= of GET /v1/jobs
SSE_POLL_S = 0.5  # how often an event stream re-reads its job when no local change was signalled
SSE_KEEPALIVE_S = 15.0
_JOB_PATH = re.compile(r"^/v1/jobs/([^/]*)(/video|/events)?$")
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")


class Changes:
    """Wakes event streams when a local worker changes a job (other processes: polling)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0

    def __call__(self, job_id: str | None = None) -> None:
        with self.cond:
            self.version += 1
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        with self.cond:
            if self.version == seen:
                self.cond.wait(timeout)
            return self.version


class ServeState:
    """Everything a request handler needs; built by `wanmoe.serve.cli`."""

    def __init__(self, *, store, data, preset, limits, model_info: dict, token: str | None = None,
                 devices=(), dtype=None, presets=(), loras=None, workers=(), ring=None) -> None:
        self.store, self.data, self.preset, self.limits = store, data, preset, limits
        self.model_info, self.token = model_info, token
        self.devices, self.dtype, self.presets, self.loras = list(devices), dtype, list(presets), loras
        self.workers = list(workers)
        self.ring = ring or (lambda: None)  # wakes idle workers after a submit
        self.changes = Changes()
        self.stopping = threading.Event()
        self.started = time.time()


def job_view(job: dict) -> dict:
    """A store record -> the API's job JSON."""
    return {"id": job["id"], "state": job["state"], "progress": job["progress"],
            "error": job["error"], "seed": job["seed"], "created": job["created"],
            "started": job["started"], "finished": job["finished"],
            "video_url": f"/v1/jobs/{job['id']}/video" if job["state"] == "succeeded" else None,
            "request": job["request"], "attempts": job["attempts"],
            "cancel_requested": job["cancel_requested"]}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Handler(BaseHTTPRequestHandler):
    server_version = "wanmoe"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a client may take to send its request; idle keep-alive ends too
    state: ServeState  # set on the subclass made by make_server

    # ---- plumbing --------------------------------------------------------------------------
    def log_message(self, fmt, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        body = json.dumps(obj, indent=None, separators=(",", ":")).encode()
        self._send(status, body, "application/json", {"Cache-Control": "no-store", **(headers or {})})

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _dispatch(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            self._route(method, url.path, parse_qs(url.query, keep_blank_values=True))
        except _HTTPError as e:
            self._error(e.status, e.message, e.headers)
        except QueueUnavailable as e:  # the shared queue's database cannot be reached
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, " ".join(str(e).split()), {"Retry-After": "5"})
        except InputError as e:
            field = getattr(e, "field", None)
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": " ".join(str(e).split()),
                                                         **({"field": field} if field else {})})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("error answering %s %s", method, self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server's log)")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # ---- routing ---------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict) -> None:
        st = self.state
        read = method in ("GET", "HEAD")
        if path in ("/", "/index.html") and read:
            return self._static("index.html")
        if path.startswith("/static/") and read:
            return self._static(path[len("/static/"):])
        if path == "/openapi.json" and read:
            from .openapi import schema

            return self._json(200, schema())
        if path == "/v1/health" and read:
            return self._json(200, {"ok": True, "model": st.preset.name,
                                    "workers": len(st.workers),
                                    "busy": sum(1 for w in st.workers if w.current),
                                    "queued": st.store.count("queued"),
                                    "uptime_s": round(time.time() - st.started, 3)})
        if not path.startswith("/v1/"):
            raise _HTTPError(404, f"no such path {path!r}")
        self._authorise(query, allow_query=path.endswith("/events"))
        if path == "/v1/model":
            self._only(method, "GET")
            return self._json(200, st.model_info)
        if path == "/v1/check":  # a job body's validation and warnings, nothing queued (the page)
            self._only(method, "POST")
            request, warnings = self._normalise()
            return self._json(200, {"request": request, "warnings": warnings})
        if path == "/v1/jobs":
            if method == "POST":
                return self._submit()
            self._only(method, "GET", "POST")
            return self._list(query)
        m = _JOB_PATH.match(path)
        if m is None or not is_job_id(m.group(1)):
            raise _HTTPError(404, "no such job" if m else f"no such path {path!r}")
        job_id, tail = m.group(1), m.group(2)
        if tail is None and method == "DELETE":
            job = st.store.cancel(job_id)
            if job is None:
                raise _HTTPError(404, f"no job {job_id}")
            st.changes(job_id)
            return self._json(200, job_view(job))
        self._only(method, *(("GET", "DELETE") if tail is None else ("GET",)))
        job = st.store.get(job_id)
        if job is None:
            raise _HTTPError(404, f"no job {job_id}")
        if tail is None:
            return self._json(200, job_view(job))
        if tail == "/video":
            return self._video(job)
        return self._events(job_id)

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method in allowed or (method == "HEAD" and "GET" in allowed):
            return
        raise _HTTPError(405, f"method {method} is not allowed here; use {', '.join(allowed)}",
                         {"Allow": ", ".join(allowed)})

    def _authorise(self, query: dict, allow_query: bool) -> None:
        token = self.state.token
        if not token:
            return
        given = self.headers.get("Authorization", "")
        ok = given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(),
                                                                 token.encode())
        if not ok and allow_query:  # EventSource cannot send headers
            q = query.get("token", [""])[0]
            ok = bool(q) and hmac.compare_digest(q.encode(), token.encode())
        if not ok:
            raise _HTTPError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                             {"WWW-Authenticate": 'Bearer realm="wanmoe"'})

    # ---- handlers --------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise _HTTPError(411, "send the body with a Content-Length (chunked bodies are not read)")
        try:
            n = int(length or 0)
        except ValueError:
            raise _HTTPError(400, f"Content-Length {length!r} is not a number") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise _HTTPError(413, f"body of {n} bytes; the limit is {MAX_BODY}")
        return self.rfile.read(n)

    def _normalise(self) -> tuple[dict, list[str]]:
        st = self.state
        return normalise(parse_body(self._body()), st.preset, st.limits, devices=st.devices,
                         dtype=st.dtype, presets=st.presets, loras=st.loras)

    def _submit(self) -> None:
        st = self.state
        request, warnings = self._normalise()
        try:
            job = st.store.create(request, request["seed"], max_queued=st.limits.queue)
        except QueueFull as e:
            raise _HTTPError(429, str(e), {"Retry-After": "2"}) from None
        st.ring()
        st.changes(job["id"])
        self._json(201, {**job_view(job), "warnings": warnings},
                   {"Location": f"/v1/jobs/{job['id']}"})

    def _list(self, query: dict) -> None:
        def number(name: str, default: int, lo: int, hi: int) -> int:
            text = query.get(name, [None])[0]
            if text is None:
                return default
            if not re.fullmatch(r"\d{1,9}", text) or not lo <= int(text) <= hi:
                raise InputError(f"{name} {text!r} must be a whole number in [{lo}, {hi}]")
            return int(text)

        limit = number("limit", 50, 1, MAX_PAGE)
        offset = number("offset", 0, 0, 10**9)
        st = self.state
        jobs = st.store.list(limit=limit, offset=offset)
        self._json(200, {"jobs": [job_view(j) for j in jobs], "total": st.store.count(),
                         "limit": limit, "offset": offset})

    def _video(self, job: dict) -> None:
        path = self.state.data.video(job["id"])
        if job["state"] != "succeeded" or not path.is_file():
            raise _HTTPError(404, f"job {job['id']} has no video yet (state {job['state']})")
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip()) if rng else None
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # the last N bytes
                start = max(0, size - int(m.group(2)))
            if start > end or start >= size:
                raise _HTTPError(416, f"range {rng!r} is outside the file of {size} bytes",
                                 {"Content-Range": f"bytes */{size}"})
            status = 206
        headers = {"Content-Type": "video/mp4", "Content-Length": str(end - start + 1),
                   "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600",
                   "Content-Disposition": f'inline; filename="{job["id"]}.mp4"',
                   "X-Content-Type-Options": "nosniff"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _events(self, job_id: str) -> None:
        st = self.state
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        last, seen, quiet_since = None, -1, time.monotonic()
        while True:
            seen = st.changes.version
            job = st.store.get(job_id)
            if job is None:
                return
            view = json.dumps(job_view(job), separators=(",", ":"))
            if job["state"] in TERMINAL:
                self._event("done", view)
                return
            if view != last:
                self._event("progress", view)
                last, quiet_since = view, time.monotonic()
            elif time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                quiet_since = time.monotonic()
            if st.stopping.is_set():
                return
            st.changes.wait(seen, SSE_POLL_S)

    def _event(self, name: str, data: str) -> None:
        self.wfile.write(f"event: {name}\ndata: {data}\n\n".encode())
        self.wfile.flush()

    def _static(self, name: str) -> None:
        if not _STATIC_NAME.match(name) or ".." in name:
            raise _HTTPError(404, "no such file")
        root = STATIC_DIR.resolve()
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file():
            if name == "index.html":  # the page is not installed: a pointer to the API
                return self._send(200, _FALLBACK_PAGE, "text/html; charset=utf-8")
            raise _HTTPError(404, "no such file")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        self._send(200, path.read_bytes(), ctype, {"Cache-Control": "no-cache"})


_FALLBACK_PAGE = b"""<!doctype html><meta charset="utf-8"><title>wanmoe serve</title>
<h1>wanmoe serve</h1><p>The web page is not installed. The API is described at
<a href="/openapi.json">/openapi.json</a>; see docs/serve.md.</p>
"""


class Server(ThreadingHTTPServer):
    daemon_threads = True  # open event streams never block shutdown
    allow_reuse_address = True
    request_queue_size = 64


def make_server(state: ServeState, host: str, port: int) -> Server:
    import socket

    handler = type("BoundHandler", (Handler,), {"state": state})
    server_cls = type("Server6", (Server,), {"address_family": socket.AF_INET6}) if ":" in host \
        else Server
    try:
        return server_cls((host, port), handler)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


__all__ = ["Changes", "Handler", "ServeState", "Server", "job_view", "make_server"]
