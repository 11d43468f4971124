"""`wanmoe serve`: load the model once per device, run one worker per device, answer HTTP.

Start-up order: flags checked -> the port bound (a port in use fails before minutes of
loading) -> the job store opened and the running jobs of a crashed earlier run put back in the
queue -> one pipeline loaded per device -> workers started -> the URL printed. Ctrl-C or
SIGTERM: the server stops accepting, each running job stops after its current step and stays
resumable (its checkpoint is kept, its lease dropped), the process exits 0. A second Ctrl-C
ends the process at once (exit 130); the job then resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from ..errors import InputError

DEFAULT_DATA_DIR = "wanmoe-data"
DEFAULT_QUEUE = 100
DEFAULT_CHECKPOINT_EVERY = 5
DEFAULT_LEASE_S = 30.0
PIXEL_FACTOR = 4  # default --max-pixels: this many times the model's largest official size
TOKEN_ENV = "WANMOE_SERVE_TOKEN"

log = logging.getLogger("wanmoe.serve")


def register_cli(sub) -> None:
    from ..cli import add_checkpoint_args, add_lora_args, add_runtime_args

    p = sub.add_parser("serve", help="HTTP API + web page with a persistent job queue",
                       description="Serve an HTTP API (and a web page at /) that queues "
                                   "text-to-video jobs in DATA_DIR/jobs.sqlite3. Queued and "
                                   "interrupted jobs survive restarts (docs/serve.md).")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="default 8000; 0 = any free port")
    s.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"jobs.sqlite3, videos/ and checkpoints/ (default ./{DEFAULT_DATA_DIR})")
    s.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on /v1 calls (or set "
                                   f"{TOKEN_ENV}, which keeps it out of the process list)")
    s.add_argument("--devices", help="comma-separated devices, one worker each "
                                     "(e.g. cuda:0,cuda:1; default: --device)")
    s.add_argument("--queue", metavar="SPEC",
                   help="where the jobs are kept: sqlite:PATH, or postgresql://USER[:PASSWORD]@"
                        "HOST[:PORT]/DB to share one queue between servers on several machines "
                        "(pip install 'wanmoe[postgres]'; docs/serve_scaleout.md); default: "
                        "DATA_DIR/jobs.sqlite3")
    s.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE,
                   help=f"most queued jobs; more get 429 (default {DEFAULT_QUEUE})")
    s.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY, metavar="K",
                   help="save the latents every K steps so an interrupted job resumes there "
                        f"(default {DEFAULT_CHECKPOINT_EVERY}; 0 = never)")
    s.add_argument("--lease", type=float, default=DEFAULT_LEASE_S, metavar="SECONDS",
                   help="a running job whose worker sent no heartbeat for this long is taken by "
                        f"another worker (default {DEFAULT_LEASE_S:g})")
    s.add_argument("--max-frames", type=int, help="cap on frames per job (default: the CLI's)")
    s.add_argument("--max-steps", type=int, help="cap on steps per job (default: the CLI's)")
    s.add_argument("--max-pixels", type=int,
                   help=f"cap on width*height (default {PIXEL_FACTOR}x the largest official size)")
    s.add_argument("--save-latents", action="store_true",
                   help="also keep each job's final latents as DATA_DIR/latents/<id>.safetensors "
                        "(key 'latents', float32 [C, F, h, w])")
    s.add_argument("--lora-dir", help="folder of LoRA files that jobs may name in \"loras\" "
                                      "(needs --lora-mode runtime)")
    add_checkpoint_args(p)
    add_lora_args(p)
    add_runtime_args(p)
    p.set_defaults(func=_cmd_serve)


def _devices(args) -> list:
    from ..validate import parse_device

    if args.devices and args.device:
        raise InputError("give either --device or --devices, not both")
    names = [d.strip() for d in args.devices.split(",")] if args.devices else [args.device]
    if any(n == "" for n in names):
        raise InputError(f"--devices {args.devices!r} has an empty entry; e.g. cuda:0,cuda:1")
    return [parse_device(n) for n in names]


def _presets(preset, loras: dict) -> list[str]:
    """Sampling presets usable with this server's weights: lightning needs LoRAs on every expert
    (the 4-step distilled pair), since the Lightning grid on the base weights makes noise."""
    names = [e.name for e in preset.experts]
    return ["lightning"] if names and all(loras.get(n) for n in names) else []


def model_info(preset, limits, presets, devices, checkpoint_every: int) -> dict:
    from ..pipeline import default_negative_prompt
    from .jobs import demo_vocabulary, is_demo

    return {"model": preset.name, "demo": is_demo(preset), "vocabulary": demo_vocabulary(preset),
            "experts": [e.name for e in preset.experts],
            "defaults": {"size": f"{preset.size[0]}*{preset.size[1]}", "frames": preset.frames,
                         "steps": preset.steps, "shift": preset.shift,
                         "guide_scale": [e.guidance for e in preset.experts], "solver": "unipc",
                         "negative_prompt": default_negative_prompt(preset), "fps": preset.fps},
            "limits": limits.as_dict(), "presets": presets,
            "sizes": [f"{w}*{h}" for w, h in preset.sizes],
            "devices": [str(d) for d in devices], "checkpoint_every": checkpoint_every}


def _cmd_serve(args) -> int:
    from .. import pipeline as P
    from ..cli import runtime_from_args
    from ..request import lora_plan
    from ..runtime.config import LoRAMode
    from ..validate import parse_vae_tile
    from .app import ServeState, make_server
    from .jobs import LoraSetup, default_limits
    from .store import worker_name
    from .stores import open_store
    from .worker import DataDir, Worker, wait_idle

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.checkpoint_every < 0:
        raise InputError(f"--checkpoint-every {args.checkpoint_every} must be >= 0 (0 = never)")
    if not args.lease > 0:
        raise InputError(f"--lease {args.lease} must be > 0 seconds")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} must be in [0, 65535]")
    devices = _devices(args)
    runtimes = [runtime_from_args(args, device=str(d)) for d in devices]
    if args.checkpoint_every and runtimes[0].cache is not None and runtimes[0].cache.enabled:
        raise InputError("--cache cannot be combined with checkpoints (the cache's state is not "
                         "saved); pass --checkpoint-every 0 to serve with a step cache (interrupted "
                         "jobs then start over)")
    tiling = parse_vae_tile(args.vae_tile)
    spec = P.resolve(args.ckpt_dir, high=args.high, low=args.low, vae=args.vae,
                     text_encoder=args.text_encoder, tokenizer=args.tokenizer)  # headers only
    preset = spec.preset
    loras = lora_plan(preset, args.lora, args.lora_high, args.lora_low)
    lora_setup = None
    if args.lora_dir:
        from pathlib import Path

        folder = Path(args.lora_dir)
        if not folder.is_dir():
            raise InputError(f"--lora-dir {args.lora_dir!r} is not a folder")
        if runtimes[0].lora_mode is not LoRAMode.RUNTIME:
            raise InputError("--lora-dir needs --lora-mode runtime (per-job LoRAs are side "
                             "branches that can be swapped between jobs)")
        lora_setup = LoraSetup(folder, loras)
    pixels = args.max_pixels or PIXEL_FACTOR * max(w * h for w, h in preset.sizes)
    limits = default_limits(preset, args.queue_size, max_frames=args.max_frames,
                            max_steps=args.max_steps, max_pixels=pixels)
    data = DataDir(args.data_dir).make()
    server = make_server(None, args.host, args.port)  # bound now; the state comes below
    store = open_store(args.queue, data.root)
    try:
        back = store.requeue_running()
        if back:
            log.info("%d interrupted job(s) back in the queue", back)
        presets = _presets(preset, loras)
        state = ServeState(store=store, data=data, preset=preset, limits=limits,
                           model_info=model_info(preset, limits, presets, devices,
                                                 args.checkpoint_every),
                           token=token, devices=devices, dtype=runtimes[0].dtype, presets=presets,
                           loras=lora_setup)
        workers = []
        for i, (dev, rt) in enumerate(zip(devices, runtimes)):
            log.info("loading %s on %s", preset.name, dev)
            pipe = P.load_pipeline(spec=spec, runtime=rt, loras=loras)
            setup = LoraSetup(lora_setup.folder, loras) if lora_setup else None  # one per pipeline
            workers.append(Worker(store, pipe, data, worker_name(f"{i}-{dev}"), lease_s=args.lease,
                                  checkpoint_every=args.checkpoint_every, loras=setup,
                                  on_change=state.changes, vae_tiling=tiling,
                                  save_latents=args.save_latents))
        state.workers = workers
        state.ring = lambda: [w.bell.set() for w in workers]
        server.RequestHandlerClass.state = state
        return _run(server, state, workers, args, token, wait_idle)
    finally:
        server.server_close()
        store.close()


def _run(server, state, workers, args, token, wait_idle) -> int:
    stop = threading.Event()
    hits = []

    def on_signal(signum, _frame):
        hits.append(signum)
        if len(hits) > 1:  # a second Ctrl-C: now (the job resumes from its last checkpoint)
            os.write(2, b"\nwanmoe serve: stopped at once\n")
            os._exit(130)
        # tell the workers at once, so a running job stops after the step it is in (not after
        # the HTTP server has wound down, by which time a short job may have run to its end)
        state.stopping.set()
        for w in workers:
            w.stop()
        stop.set()

    # the CLI's InterruptGuard ends the process 1.5 s after a Ctrl-C; a server instead lets the
    # running step end, so the guard's wakeup fd is detached while serving
    old_fd = signal.set_wakeup_fd(-1)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for w in workers:
            w.start()
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="http", daemon=True)
        thread.start()
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        if host not in ("127.0.0.1", "::1", "localhost") and not token:
            log.warning("listening on %s without --token: anyone who can reach it can submit jobs",
                        host)
        print(f"wanmoe serve: http://{shown}:{port}/ ({state.preset.name}, "
              f"{len(workers)} worker(s), data in {state.data.root})", flush=True)
        while not stop.wait(0.5):
            pass
        log.info("stopping: no new requests; running jobs stop after their current step")
        server.shutdown()
        wait_idle(workers, timeout=None)
        print("wanmoe serve: stopped", flush=True)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
