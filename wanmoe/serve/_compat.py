"""TEMPORARY adapter until the pipeline's on_step/checkpoint API lands on main (then deleted)."""

from __future__ import annotations

import inspect
import threading

_local = threading.local()


def generate(pipe, prompt, negative_prompt, *, on_step=None, checkpoint=None, checkpoint_every=0,
             resume=None, **kw):
    params = inspect.signature(pipe.generate).parameters
    if "on_step" in params:
        return pipe.generate(prompt, negative_prompt, on_step=on_step, checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every, resume=resume, **kw)
    from .. import pipeline as P

    if not getattr(P._StepBar, "_serve_patched", False):
        base = P._StepBar

        class Bar(base):
            _serve_patched = True

            def __call__(self, i, n, stage, t):
                super().__call__(i, n, stage, t)
                cb = getattr(_local, "on_step", None)
                if cb is not None:
                    cb(len(self.experts), n, stage.expert)

        P._StepBar = Bar
    _local.on_step = on_step
    try:
        return pipe.generate(prompt, negative_prompt, **kw)
    finally:
        _local.on_step = None
