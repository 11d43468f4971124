"""`wanmoe serve` as a subprocess on the demo model, and a tiny HTTP client (http.client: raw
paths). A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # importing torch and loading the demo model on a busy 2-core box
CHEAP = {"steps": 1, "frames": 1, "size": "32*32"}  # the cheapest job the demo model runs


class ServeProcess:
    """`python -m wanmoe serve --port 0 ...`; `url` once it printed that it listens."""

    def __init__(self, data_dir, *args, token=None, log_name="serve.log", wait=True):
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{log_name}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        env.pop("WANMOE_SERVE_TOKEN", None)
        cmd = [sys.executable, "-m", "wanmoe", "serve", "--port", "0", "--data-dir",
               str(self.data_dir), *args] + (["--token", token] if token else [])
        self.token = token
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log)
        self.lines = []
        self._ready = ready = threading.Event()

        def read():
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if "http://" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if wait:
            self.ready()

    def ready(self) -> "ServeProcess":
        """Wait until the server printed its URL (it listens and its workers run)."""
        if not self._ready.wait(START_TIMEOUT_S) or not any("http://" in x for x in self.lines):
            self.kill()
            raise AssertionError(f"wanmoe serve did not start: {self.log()[-2000:]}")
        m = re.search(r"http://([^/]+):(\d+)/", next(x for x in self.lines if "http://" in x))
        self.host, self.port = m.group(1), int(m.group(2))
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method, path, body=None, token="default", headers=None, timeout=60):
        """-> (status, headers dict, body bytes); `path` is sent exactly as given."""
        con = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        con.request(method, path, body=data, headers=h)
        r = con.getresponse()
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        con.close()
        return out

    def json(self, method, path, body=None, **kw):
        status, headers, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def submit(self, body, retry_full=False):
        """POST a job; with retry_full, 429 answers are retried until it is accepted."""
        while True:
            status, job = self.json("POST", "/v1/jobs", body)
            if status == 429 and retry_full:
                time.sleep(0.05)
                continue
            return status, job

    def events(self, job_id, token=None, timeout=120):
        """Follow /v1/jobs/{id}/events to its end -> [(event, job dict)]."""
        con = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        q = f"?token={token}" if token else ""
        h = {"Authorization": f"Bearer {self.token}"} if self.token and not token else {}
        con.request("GET", f"/v1/jobs/{job_id}/events{q}", headers=h)
        r = con.getresponse()
        assert r.status == 200, r.read()
        assert r.getheader("Content-Type") == "text/event-stream"
        out, name = [], None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
        con.close()
        return out

    def wait(self, job_id, timeout=120, states=("succeeded", "failed", "cancelled")):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, job = self.json("GET", f"/v1/jobs/{job_id}")
            assert status == 200
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {job}")

    def stop(self, timeout=60) -> int:
        """SIGTERM (what Ctrl-C does too) -> the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()


def ended_lines(log: str, job_id: str) -> list[str]:
    """The server log's 'job <id> <final state>' lines of one job (one per ending)."""
    return re.findall(rf"job {job_id} (succeeded|failed|cancelled)\b", log)
