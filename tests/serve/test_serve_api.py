"""`wanmoe serve` end to end through HTTP: one server (demo model, --token) for the whole module.

Jobs are real generations on the demo model; the MP4s are decoded with PyAV.
"""

import json

import numpy as np
import pytest

from helpers_serve import CHEAP, ServeProcess, ended_lines

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(tmp_path_factory.mktemp("api") / "data", "--checkpoint-every", "2",
                     "--save-latents",
                     "--queue-size", "50", token=TOKEN)
    yield s
    rc = s.stop()
    assert rc == 0, s.log()[-3000:]
    assert "stopped" in s.lines[-1]


def _decode(data: bytes, tmp_path):
    from wanmoe.video import read_mp4

    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    return read_mp4(path)


def test_submit_follow_events_download(server, tmp_path):
    status, job = server.submit({"prompt": "a red ball moves right", "steps": 4, "seed": 7})
    assert status == 201, job
    assert job["state"] == "queued" and job["seed"] == 7 and job["video_url"] is None
    assert job["request"]["size"] == "128*128" and job["request"]["frames"] == 17
    assert isinstance(job["warnings"], list)
    events = server.events(job["id"])
    names = [e for e, _ in events]
    assert names[-1] == "done" and set(names[:-1]) <= {"progress"}
    final = events[-1][1]
    assert final["state"] == "succeeded", final
    assert final["video_url"] == f"/v1/jobs/{job['id']}/video"
    assert final["progress"] == {"step": 4, "steps": 4, "expert": "low_noise"}
    assert final["created"] <= final["started"] <= final["finished"]
    steps = [j["progress"]["step"] for e, j in events if e == "progress"]
    assert steps == sorted(steps)  # progress only moves forward
    status, headers, data = server.request("GET", final["video_url"])
    assert status == 200 and headers["content-type"] == "video/mp4"
    frames, fps = _decode(data, tmp_path)
    assert frames.shape == (17, 128, 128, 3) and fps == 16
    assert frames.std() > 1  # a picture, not a blank frame
    # a byte range (what a browser's <video> asks for)
    status, headers, part = server.request("GET", final["video_url"], headers={"Range": "bytes=0-99"})
    assert status == 206 and part == data[:100]
    assert headers["content-range"] == f"bytes 0-99/{len(data)}"
    status, got = server.json("GET", f"/v1/jobs/{job['id']}")
    assert status == 200 and got["state"] == "succeeded" and got["attempts"] == 1
    assert not (server.data_dir / "checkpoints" / f"{job['id']}.ckpt").exists()
    assert (server.data_dir / "videos" / f"{job['id']}.mp4").read_bytes() == data
    assert ended_lines(server.log(), job["id"]) == ["succeeded"]


def test_cancel_queued_and_running(server):
    # a long job (many cheap steps) keeps the worker busy; the next one waits in the queue
    status, long = server.submit({"prompt": "a blue square", "steps": 400, "frames": 1,
                                  "size": "32*32"})
    assert status == 201
    status, queued = server.submit({"prompt": "a green ball", **CHEAP})
    assert status == 201
    status, job = server.json("DELETE", f"/v1/jobs/{queued['id']}")
    assert status == 200 and job["state"] == "cancelled" and job["started"] is None
    server.wait(long["id"], states=("running",))
    for _ in range(200):  # running, with at least one step done
        _, job = server.json("GET", f"/v1/jobs/{long['id']}")
        if job["progress"]["step"] >= 1:
            break
    status, job = server.json("DELETE", f"/v1/jobs/{long['id']}")
    assert status == 200 and job["cancel_requested"] is True
    final = server.wait(long["id"])
    assert final["state"] == "cancelled" and final["video_url"] is None
    assert final["progress"]["step"] < 400  # stopped early, within a step of the request
    status, _, _ = server.request("GET", f"/v1/jobs/{long['id']}/video")
    assert status == 404
    assert not (server.data_dir / "checkpoints" / f"{long['id']}.ckpt").exists()
    _, q = server.json("GET", f"/v1/jobs/{queued['id']}")
    assert q["state"] == "cancelled" and q["started"] is None  # never ran
    status, again = server.json("DELETE", f"/v1/jobs/{long['id']}")
    assert status == 200 and again["state"] == "cancelled"  # terminal: unchanged


@pytest.mark.parametrize("body, field", [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x" * 100_001}, "prompt"),
    ({"prompt": "a ball", "frames": 6}, "frames"),
    ({"prompt": "a ball", "frames": "17"}, "frames"),
    ({"prompt": "a ball", "frames": 17.0}, "frames"),
    ({"prompt": "a ball", "steps": 0}, "steps"),
    ({"prompt": "a ball", "steps": True}, "steps"),
    ({"prompt": "a ball", "size": "100*100"}, "size"),
    ({"prompt": "a ball", "size": "big"}, "size"),
    ({"prompt": "a ball", "size": "4096*4096"}, "size"),
    ({"prompt": "a ball", "shift": -1}, "shift"),
    ({"prompt": "a ball", "shift": "5"}, "shift"),
    ({"prompt": "a ball", "guide_scale": [1, 2, 3]}, "guide_scale"),
    ({"prompt": "a ball", "guide_scale": "high"}, "guide_scale"),
    ({"prompt": "a ball", "solver": "magic"}, "solver"),
    ({"prompt": "a ball", "seed": -5}, "seed"),
    ({"prompt": "a ball", "preset": "lightning"}, "preset"),
    ({"prompt": "a ball", "loras": ["/etc/passwd"]}, "loras"),
    ({"prompt": "a ball", "negative_prompt": ["x"]}, "negative_prompt"),
    ({"prompt": "a ball", "colour": "red"}, "colour"),
])
def test_bad_bodies_are_422_naming_the_field(server, body, field):
    before = server.json("GET", "/v1/jobs?limit=1")[1]["total"]
    status, err = server.json("POST", "/v1/jobs", body)
    assert status == 422, err
    assert set(err) == {"error", "field"} and "\n" not in err["error"]
    assert err["field"] == field and err["error"].startswith(field), err
    assert server.json("GET", "/v1/jobs?limit=1")[1]["total"] == before  # nothing queued


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_bodies_that_are_not_a_json_object_are_422(server, raw):
    status, _, data = server.request("POST", "/v1/jobs", raw)
    assert status == 422 and "body" in json.loads(data)["error"]


@pytest.mark.parametrize("path", [
    "/v1/jobs/../../etc/passwd",
    "/v1/jobs/%2e%2e/%2e%2e/etc/passwd",
    "/v1/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/v1/jobs/..%2f..%2fjobs.sqlite3/video",
    "/v1/jobs/" + "g" * 32,
    "/v1/jobs/" + "A" * 32,
    "/v1/jobs/" + "0" * 31,
    "/v1/jobs/" + "0" * 33 + "/video",
    "/v1/jobs/" + "0" * 32,  # well formed, unknown
    "/v1/jobs/" + "0" * 32 + "/video",
    "/v1/jobs/" + "0" * 32 + "/events",
    "/v1/jobs/" + "0" * 32 + "%00/video",
    "/static/../jobs.sqlite3",
    "/static/%2e%2e/%2e%2e/store.py",
    "/static/.hidden",
    "/v1/nothing",
    "/etc/passwd",
])
def test_unknown_ids_and_path_tricks_are_404(server, path):
    status, _, data = server.request("GET", path)
    assert status == 404, (path, data)
    assert b"root:" not in data and b"SQLite" not in data


def test_delete_of_unknown_or_bad_id_is_404(server):
    for path in ("/v1/jobs/" + "0" * 32, "/v1/jobs/..%2f..", "/v1/jobs/" + "z" * 32):
        assert server.request("DELETE", path)[0] == 404


def test_token(server):
    for token in (None, "wrong", TOKEN + "x"):
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/model"), ("POST", "/v1/jobs"),
                             ("GET", "/v1/jobs/" + "0" * 32), ("DELETE", "/v1/jobs/" + "0" * 32)):
            status, headers, data = server.request(method, path, {"prompt": "x"}, token=token)
            assert status == 401, (method, path, token)
            assert "error" in json.loads(data) and headers["www-authenticate"].startswith("Bearer")
    status, health = server.json("GET", "/v1/health", token=None)
    assert status == 200 and health["ok"] is True and health["model"] == "demo"
    assert server.request("GET", "/", token=None)[0] == 200  # the page loads; it asks for the token
    assert server.request("GET", "/openapi.json", token=None)[0] == 200
    # the event stream takes ?token= (EventSource sends no headers)
    status, job = server.submit({"prompt": "a red ball", **CHEAP})
    assert server.request("GET", f"/v1/jobs/{job['id']}/events?token=bad", token=None)[0] == 401
    events = server.events(job["id"], token=TOKEN)
    assert events[-1][0] == "done" and events[-1][1]["state"] == "succeeded"


def test_list_is_paged_newest_first(server):
    ids = [server.submit({"prompt": f"a ball {i}", **CHEAP})[1]["id"] for i in range(3)]
    status, page = server.json("GET", "/v1/jobs?limit=2")
    assert status == 200 and [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    assert page["total"] >= 3 and page["limit"] == 2
    _, page2 = server.json("GET", "/v1/jobs?limit=2&offset=2")
    assert page2["jobs"][0]["id"] == ids[0]
    for bad in ("limit=0", "limit=501", "limit=x", "offset=-1", "limit=1e3"):
        status, err = server.json("GET", f"/v1/jobs?{bad}")
        assert status == 422 and bad.split("=")[0] in err["error"]
    for i in ids:
        server.wait(i)


def test_model_info(server):
    status, info = server.json("GET", "/v1/model")
    assert status == 200
    assert info["model"] == "demo" and info["demo"] is True
    assert info["defaults"]["size"] == "128*128" and info["defaults"]["frames"] == 17
    assert info["defaults"]["steps"] == 20 and info["defaults"]["guide_scale"] == [4.0, 3.0]
    limits = info["limits"]
    assert limits["queue"] == 50 and limits["prompt_chars"] == 100_000
    assert limits["max_pixels"] == 4 * 128 * 128 and limits["max_frames"] >= 17
    assert info["presets"] == []  # no Lightning LoRA pair configured
    assert info["sizes"] == ["128*128"]


def test_openapi_schema_is_valid_and_covers_the_routes(server):
    status, schema = server.json("GET", "/openapi.json", token=None)
    assert status == 200 and schema["openapi"].startswith("3.")
    assert {"/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/video", "/v1/jobs/{id}/events",
            "/v1/model", "/v1/health"} <= set(schema["paths"])
    validator = pytest.importorskip("openapi_spec_validator",
                                    reason="openapi-spec-validator is not installed")
    validator.validate(schema)


def test_wrong_methods_are_405(server):
    assert server.request("PUT", "/v1/jobs", {"prompt": "x"})[0] == 405
    assert server.request("POST", "/v1/model", {})[0] == 405
    status, headers, _ = server.request("PATCH", "/v1/jobs/" + "0" * 32, {})
    assert status == 405 and "DELETE" in headers["allow"]


@pytest.fixture
def one_thread():
    """The server runs with OMP_NUM_THREADS=1; so does the reference, for the same float sums."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_served_job_equals_the_pipeline_run(server, tmp_path, one_thread):
    """The server passes prompt, seed and settings through unchanged: its latents equal those
    `pipe.generate` makes in this process for the same request, and its MP4 decodes to the
    same frames up to the encoder (x264 is not bit-reproducible from run to run, seen <= 7)."""
    import torch
    from safetensors.torch import load_file

    from wanmoe import pipeline as P

    body = {"prompt": "a yellow triangle moves left", "steps": 3, "frames": 5, "size": "64*64",
            "seed": 11}
    _, job = server.submit(body)
    final = server.wait(job["id"])
    assert final["state"] == "succeeded", final
    served, _ = _decode(server.request("GET", final["video_url"])[2], tmp_path)
    latents = load_file(server.data_dir / "latents" / f"{job['id']}.safetensors")["latents"]
    pipe = P.load_pipeline(device="cpu")
    with torch.no_grad():
        ref = pipe.generate(body["prompt"], steps=3, frames=5, size="64*64", seed=11, progress=False)
    assert torch.equal(latents, ref.latents)
    assert served.shape == (5, 64, 64, 3) == tuple(ref.frames.shape)
    diff = np.abs(served.astype(int) - ref.frames.numpy().astype(int))
    assert diff.mean() < 2 and np.percentile(diff, 99) <= 12  # H.264 at crf 10 on 64x64
