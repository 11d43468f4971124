"""wanmoe: a lean, parity-tested engine for Wan2.2 T2V-A14B (MoE) and TI2V-5B."""

__version__ = "0.1.0"


def load_pipeline(path=None, **kwargs):
    """Load a text-to-video pipeline from a checkpoint path (None: the built-in demo model)."""
    from .pipeline import load_pipeline as _load  # lazy: importing wanmoe stays cheap

    return _load(path, **kwargs)
