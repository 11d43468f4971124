"""Make docs/assets/serve_page.png: the page of `wanmoe serve` (demo model) in headless Chromium,
with four finished jobs, one running, one queued and a prompt with unknown words typed in.

    python scripts/serve_page_screenshot.py [OUT.png]      # default docs/assets/serve_page.png

Needs what the browser test needs (bash scripts/install.sh test: selenium, chromium,
chromium-driver). Takes about a minute on a 2-core box.
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serve.conftest import ServeProcess  # noqa: E402  (the test suite's server runner)

FINISHED = ["a red ball moves to the right on a black background",
            "a yellow square moves up on a dark blue background",
            "a green triangle moves to the left on a gray background",
            "a pink diamond grows on a brown background"]
RUNNING = "a cyan box moves down on a dark green background"
QUEUED = "a white disc bounces on a black background"
TYPED = "an orange ball slides down on a gray background under the moon"


def main(out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work = Path(tempfile.mkdtemp(prefix="serve-shot-"))
    server = ServeProcess(work / "data")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required",
                "--mute-audio", f"--user-data-dir={work / 'profile'}"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        d.get(f"http://{server.host}:{server.port}/")
        time.sleep(2)

        def submit(prompt: str, seed: int, steps: int | None = None) -> None:
            for field, value in (("prompt", prompt), ("steps", steps), ("seed", seed)):
                box = d.find_element("id", field)
                box.clear()
                if value is not None:
                    box.send_keys(str(value))
            d.find_element("id", "submit").click()
            time.sleep(0.7)

        for seed, prompt in enumerate(FINISHED):
            submit(prompt, seed)
        while server.json("GET", "/v1/jobs")[1]["jobs"][0]["state"] != "succeeded":
            time.sleep(0.5)
        submit(RUNNING, 4, steps=300)
        submit(QUEUED, 5)
        first = server.json("GET", "/v1/jobs")[1]["jobs"][-1]["id"]
        d.find_element("id", "play-" + first).click()
        box = d.find_element("id", "prompt")
        box.clear()
        box.send_keys(TYPED)
        while True:  # the running job about half way
            job = server.json("GET", "/v1/jobs")[1]["jobs"][1]
            if job["state"] == "running" and job["progress"]["step"] >= 0.45 * job["progress"]["steps"]:
                break
            time.sleep(0.1)
        d.execute_script("const v = document.getElementById('player'); v.pause(); v.currentTime = 0.55;"
                         "document.getElementById('queue').scrollTop = 0;"
                         "document.getElementById('seed').value = ''; window.scrollTo(0, 0);")
        time.sleep(0.6)
        height = d.execute_script("return document.documentElement.scrollHeight;")
        d.set_window_size(1280, height + 200)
        time.sleep(0.5)
        shot = d.execute_cdp_cmd("Page.captureScreenshot",
                                 {"captureBeyondViewport": True, "fromSurface": True})
        out.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote {out}")
    finally:
        d.quit()
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "assets" / "serve_page.png")
