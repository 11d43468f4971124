"""The web page of `wanmoe serve` in a real headless Chromium.

`python -m wanmoe serve` (demo model) runs as a subprocess (port 0: it prints the port it got,
tests/serve/conftest.py); Selenium drives
Debian's `chromium` through `chromium-driver` (`bash scripts/install.sh test` installs both, and
the `selenium` package). Where they are missing the tests skip and name what is missing; under CI
(`CI` set) they fail instead, so a CI run cannot pass without having run them.

What is checked, each against the server's own answers fetched here over HTTP:
- the form shows the model's defaults, limits and presets from GET /v1/model, and the demo
  model's vocabulary, with a live note of the typed words it does not know;
- submit -> the job's progress bar advances through intermediate steps (recorded in the page by a
  MutationObserver, so no update is missed between polls), the active expert is shown, the job
  succeeds, and the <video> element plays the MP4 (readyState >= 2, currentTime advances,
  duration = frames / fps of the file decoded here with PyAV);
- a bad value (frames=4) shows exactly the server's 422 message next to the frames field;
- a full queue's 429 message is shown under the button; the cancel buttons cancel a queued and
  a running job;
- with `--token`, the page asks for the token on 401, keeps it in localStorage, and then works
  (events via ?token=, the video fetched with the Authorization header), and a seed past 2**53
  survives the round trip through JavaScript.
A third test (no browser) checks POST /v1/check, which the page's live note uses.
A screenshot of the page is saved in the test's tmp folder (docs/assets/serve_page.png, with more
jobs on the page, is made by scripts/serve_page_screenshot.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.serve.conftest import ServeProcess

STATES_DONE = ("succeeded", "failed", "cancelled")


def _find(env: str, names: tuple[str, ...], paths: tuple[str, ...] = ()) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for n in names:
        if found := shutil.which(n):
            return found
    return next((p for p in paths if Path(p).is_file()), None)


CHROMIUM = _find("WANMOE_CHROMIUM", ("chromium", "chromium-browser"))
CHROMEDRIVER = _find("WANMOE_CHROMEDRIVER", ("chromedriver",), ("/usr/lib/chromium/chromedriver",))


def _missing() -> list[str]:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package 'selenium' (pip install selenium)")
    if CHROMIUM is None:
        missing.append("a chromium binary (Debian: apt-get install chromium; or set WANMOE_CHROMIUM)")
    if CHROMEDRIVER is None:
        missing.append("chromedriver (Debian: apt-get install chromium-driver; or set "
                       "WANMOE_CHROMEDRIVER)")
    return missing


# ---------------------------------------------------------------------------------------------
# the server (tests/serve/conftest.py: `python -m wanmoe serve --port 0`, the port it printed)


def _url(server: ServeProcess) -> str:
    return f"http://{server.host}:{server.port}"


def _api(server: ServeProcess, method: str, path: str, body: dict | None = None):
    """(status, parsed JSON or raw bytes, content type) of one request, with the server's token."""
    status, headers, data = server.request(method, path, body)
    ctype = headers.get("content-type", "")
    return status, (json.loads(data) if "json" in ctype else data), ctype


# ---------------------------------------------------------------------------------------------
# the browser


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = _missing()
    if missing:
        message = "browser test needs " + "; ".join(missing) + " (bash scripts/install.sh test)"
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test, but it lacks " + "; ".join(missing))
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required",
                "--mute-audio", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given here means Selenium Manager (which would download one) is not run.
    d = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    d.set_script_timeout(30)
    yield d
    d.quit()


def _wait(what: str, fn, timeout: float = 60.0, every: float = 0.05):
    """Poll fn() until it returns something truthy; fail naming `what` after timeout s."""
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _text(d, element_id: str) -> str:
    return d.execute_script("const e = document.getElementById(arguments[0]);"
                            "return e ? e.textContent.trim() : null;", element_id)


def _set(d, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    e = d.find_element(By.ID, element_id)
    e.send_keys(Keys.CONTROL, "a")
    e.send_keys(Keys.DELETE)
    if value:
        e.send_keys(value)


def _click(d, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    d.find_element(By.ID, element_id).click()


def _newest_job_id(d, but_not: set[str]) -> str:
    def find():
        ids = d.execute_script("return [...document.querySelectorAll('#queue > li')]"
                               ".map(li => li.id.slice(4));")
        new = [i for i in ids if i not in but_not]
        return new[0] if new else None
    return _wait("the new job in the queue", find, 20)


# Records every change of every progress bar and expert label in the queue.
_RECORDER = """
window.__seen = [];
const snap = () => {
  for (const bar of document.querySelectorAll('#queue progress')) {
    const id = bar.id.slice(9);
    const ex = document.getElementById('expert-' + id);
    const st = document.getElementById('state-' + id);
    const rec = {id: id, value: bar.value, max: bar.max,
                 expert: ex ? ex.dataset.expert || '' : '', state: st ? st.textContent : ''};
    const last = window.__seen.filter(r => r.id === id).pop();
    if (!last || last.value !== rec.value || last.max !== rec.max || last.expert !== rec.expert ||
        last.state !== rec.state) window.__seen.push(rec);
  }
};
new MutationObserver(snap).observe(document.getElementById('queue'),
  {subtree: true, childList: true, attributes: true, characterData: true});
"""


def _screenshot(d, tmp_path: Path) -> None:
    shot = tmp_path / "serve_page.png"
    d.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 600, (width, height)


def _js_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e.get("source") == "javascript"]


# ---------------------------------------------------------------------------------------------
# the tests


def test_submit_watch_progress_play_error_cancel(driver, serve_factory, tmp_path):
    import av

    d = driver
    server = serve_factory(tmp_path / "data", "--queue-size", "1")  # one queued job at most
    status, model, _ = _api(server, "GET", "/v1/model")
    assert status == 200, model
    defaults, limits = model["defaults"], model.get("limits") or {}
    d.get(_url(server) + "/")

    # the model panel and the form come from GET /v1/model
    _wait("the model name", lambda: model["model"] in (_text(d, "model-name") or ""), 20)
    for field in ("frames", "steps", "size"):
        assert d.find_element("id", field).get_attribute("placeholder") == str(defaults[field])
    options = d.execute_script("return [...document.getElementById('preset').options]"
                               ".map(o => o.textContent);")
    assert options == ["official"] + [p for p in model.get("presets") or [] if p != "official"]
    vocab = model.get("vocabulary")
    if model.get("demo") and importlib.util.find_spec("wanmoe.demo.vocabulary"):
        assert vocab, "the demo model must list the words it knows (wanmoe.demo.vocabulary)"
    base = "a red ball moves to the right on a black background"
    unknown = "florp"
    prompt = base + " " + unknown if vocab else base
    if vocab:
        shown = d.execute_script("return [...document.querySelectorAll('#vocabulary li')]"
                                 ".map(li => li.textContent);")
        assert sorted(shown) == sorted(vocab)
        assert unknown not in {w.lower() for w in vocab}
        assert all(w in vocab for w in re.findall(r"[a-z]+", base))

    # submit; follow the progress bar and the expert label
    # 40 steps: ~1 s of demo denoising on an idle 2-core box, long enough to see steps go by
    steps = min(int(limits.get("max_steps") or 40), 40)
    d.execute_script(_RECORDER)
    _set(d, "prompt", base)
    if vocab:  # the live note names the unknown word while it is there, and goes with it
        from selenium.webdriver.common.keys import Keys

        note = lambda: _text(d, "prompt-unknown") or ""  # noqa: E731
        box = d.find_element("id", "prompt")
        box.send_keys(" " + unknown)
        _wait("the unknown-word note", lambda: unknown in note(), 10)
        for word in ("red", "ball", "black", "background"):
            assert word not in note(), note()
        box.send_keys(Keys.BACKSPACE * (len(unknown) + 1))
        _wait("the note to go with the word", lambda: note() == "", 10)
        box.send_keys(" " + unknown)
        _wait("the unknown-word note again", lambda: unknown in note(), 10)
        assert d.find_element("id", "prompt").get_attribute("value") == prompt
    _set(d, "steps", str(steps))
    _click(d, "submit")
    job_id = _newest_job_id(d, set())
    if vocab:  # the server's warning about the unknown word is shown
        _wait("the server's warning", lambda: unknown in (_text(d, "warnings") or ""), 10)
    _wait("the job to finish", lambda: _text(d, "state-" + job_id) in STATES_DONE, 120)
    status, job, _ = _api(server, "GET", f"/v1/jobs/{job_id}")
    assert job["state"] == "succeeded", (job, server.log())
    assert _text(d, "state-" + job_id) == "succeeded"
    assert job["request"]["steps"] == steps

    seen = [r for r in d.execute_script("return window.__seen;") if r["id"] == job_id]
    values = [r["value"] for r in seen]
    assert values == sorted(values), f"the progress bar went backwards: {values}"
    between = {r["value"] for r in seen if 0 < r["value"] < r["max"] and r["max"] == steps}
    assert len(between) >= 2, f"the progress bar did not advance through steps: {seen}"
    assert seen[-1]["value"] == seen[-1]["max"] == steps
    experts = [r["expert"] for r in seen if r["expert"]]
    assert experts, "no expert label was shown"
    if model.get("demo"):  # the demo is a two-expert MoE: high noise first, then low noise
        order = [e for i, e in enumerate(experts) if i == 0 or experts[i - 1] != e]
        assert order == ["high_noise", "low_noise"], order
    assert _text(d, "steps-" + job_id) == f"step {steps}/{steps}"

    # the player plays the finished job's MP4
    status, mp4, ctype = _api(server, "GET", job["video_url"])
    assert status == 200 and ctype.startswith("video/mp4")
    mp4_path = tmp_path / "job.mp4"
    mp4_path.write_bytes(mp4)
    with av.open(str(mp4_path)) as c:
        stream = c.streams.video[0]
        n_frames = sum(1 for _ in c.decode(stream))
        fps = float(stream.average_rate)
    expected = n_frames / fps  # demo: 17 / 16 = 1.0625 s
    video = _wait("the player to load the video", lambda: d.execute_script(
        "const v = document.getElementById('player');"
        "return v.dataset.job === arguments[0] && v.readyState >= 2 ? "
        "{t: v.currentTime, duration: v.duration, w: v.videoWidth, h: v.videoHeight} : null;",
        job_id), 20)
    assert abs(video["duration"] - expected) < 0.5 / fps, (video, expected)
    w, h = (int(x) for x in job["request"]["size"].replace("x", "*").split("*"))
    assert (video["w"], video["h"]) == (w, h)
    t0 = video["t"]
    _wait("the video to play (currentTime to advance)", lambda: d.execute_script(
        "return document.getElementById('player').currentTime;") != t0, 10)
    assert d.execute_script("return document.getElementById('player').paused;") is False
    gallery = _text(d, "gallery-" + job_id)
    assert gallery is not None and prompt in gallery
    _screenshot(d, tmp_path)  # the queue, the player, the gallery, the warning

    # a bad value: the server's own 422 message next to the frames field, nowhere else
    _set(d, "steps", "")
    _set(d, "frames", "4")
    status, err, _ = _api(server, "POST", "/v1/jobs", {"prompt": prompt, "frames": 4})
    assert status == 422 and err["error"], err
    _click(d, "submit")
    _wait("the frames error", lambda: _text(d, "frames-error"), 10)
    assert _text(d, "frames-error") == err["error"]
    assert d.find_element("id", "frames").get_attribute("aria-invalid") == "true"
    for other in ("prompt", "size", "steps", "seed", "form"):
        assert _text(d, other + "-error") == "", other
    assert len(d.find_elements("css selector", "#queue > li")) == 1, "a rejected job was queued"

    # a full queue: one long job running, one queued, a third refused (429) under the button;
    # then both cancelled from their buttons
    _set(d, "frames", "")
    _set(d, "steps", str(int(limits.get("max_steps") or 1000)))
    _click(d, "submit")
    long_id = _newest_job_id(d, {job_id})
    _wait("the long job to run", lambda: _text(d, "state-" + long_id) == "running", 30)
    _click(d, "submit")
    queued_id = _newest_job_id(d, {job_id, long_id})
    assert _text(d, "state-" + queued_id) == "queued"
    status, full, _ = _api(server, "POST", "/v1/jobs", {"prompt": prompt})
    assert status == 429, full
    _click(d, "submit")
    _wait("the queue-full message", lambda: full["error"] in (_text(d, "form-error") or ""), 10)
    assert len(d.find_elements("css selector", "#queue > li")) == 3
    for jid, state in ((queued_id, "queued"), (long_id, "running")):
        _wait("the cancel button", lambda: d.execute_script(
            "const b = document.getElementById('cancel-' + arguments[0]); return b && !b.hidden;",
            jid), 10)
        assert _text(d, "state-" + jid) == state
        _click(d, "cancel-" + jid)
        _wait("the job to be cancelled", lambda: _text(d, "state-" + jid) == "cancelled", 30)
        assert _api(server, "GET", f"/v1/jobs/{jid}")[1]["state"] == "cancelled"
        assert d.execute_script("return document.getElementById('cancel-' + arguments[0]).hidden;",
                                jid)
    assert _js_errors(d) == []


def test_token_is_asked_for_kept_and_used(driver, serve_factory, tmp_path):
    token = "s3cret-token"
    server = serve_factory(tmp_path / "data", token=token)
    d = driver
    assert server.request("GET", "/v1/model", token=None)[0] == 401
    d.get(_url(server) + "/")
    _wait("the token form", lambda: d.execute_script(
        "return !document.getElementById('token-form').hidden;"), 20)
    _set(d, "token-input", "wrong")
    _click(d, "token-save")
    _wait("the refusal of a wrong token", lambda: "refused" in (_text(d, "token-error") or ""), 20)
    _set(d, "token-input", token)
    _click(d, "token-save")
    model = _api(server, "GET", "/v1/model")[1]
    _wait("the model name", lambda: model["model"] in (_text(d, "model-name") or ""), 20)
    assert d.execute_script("return localStorage.getItem('wanmoe.token');") == token
    assert d.execute_script("return document.getElementById('token-form').hidden;")

    _set(d, "prompt", "a blue box moves up on a black background")
    _set(d, "steps", "2")  # only the token matters here
    seed = 2**63 - 1  # the largest seed: past JavaScript's exact integers (2**53)
    _set(d, "seed", str(seed))
    _click(d, "submit")
    job_id = _newest_job_id(d, set())
    _wait("the job to finish", lambda: _text(d, "state-" + job_id) in STATES_DONE, 120)
    assert _text(d, "state-" + job_id) == "succeeded", server.log()
    job = _api(server, "GET", f"/v1/jobs/{job_id}")[1]
    assert job["state"] == "succeeded" and job["seed"] == seed
    assert f"seed {seed} " in _text(d, "meta-" + job_id) + " "
    # the <video> cannot send the header: the page fetched the MP4 with it
    _wait("the player to load the video", lambda: d.execute_script(
        "const v = document.getElementById('player');"
        "return v.dataset.job === arguments[0] && v.readyState >= 2 && "
        "v.src.startsWith('blob:');", job_id), 20)

    # a reload keeps the token: no question asked again
    d.refresh()
    _wait("the queue after a reload", lambda: _text(d, "state-" + job_id) == "succeeded", 20)
    assert d.execute_script("return document.getElementById('token-form').hidden;")
    assert _js_errors(d) == []


def test_check_endpoint_validates_without_queuing(serve_factory, tmp_path):
    """POST /v1/check (the page's live check): POST /v1/jobs' answers, but nothing is queued."""
    server = serve_factory(tmp_path / "data")
    prompt = "a red ball moves to the right on a white background florp"
    status, checked, _ = _api(server, "POST", "/v1/check", {"prompt": prompt, "seed": 7})
    assert status == 200, checked
    assert checked["request"]["prompt"] == prompt and checked["request"]["seed"] == 7
    assert checked["request"]["frames"] == _api(server, "GET", "/v1/model")[1]["defaults"]["frames"]
    bad = {"prompt": prompt, "frames": 4}
    status, err, _ = _api(server, "POST", "/v1/check", bad)
    assert status == 422 and err.get("field") == "frames"
    assert _api(server, "POST", "/v1/jobs", bad)[1] == err  # the very same answer
    assert _api(server, "GET", "/v1/jobs")[1]["total"] == 0  # nothing was queued
    status, job, _ = _api(server, "POST", "/v1/jobs", {"prompt": prompt, "seed": 7})
    assert status == 201 and job["warnings"] == checked["warnings"]
    if importlib.util.find_spec("wanmoe.demo.vocabulary"):
        from wanmoe.demo.vocabulary import unknown_words

        assert "florp" in unknown_words(prompt)
        assert all(w in " ".join(checked["warnings"]) for w in unknown_words(prompt))
    assert server.request("GET", "/v1/check")[0] == 405
