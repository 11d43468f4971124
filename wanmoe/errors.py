"""Error types shown to users as one clear line (the CLI prints them without a stack trace)."""


class WanmoeError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class InputError(WanmoeError, ValueError):
    """A user-supplied value breaks a rule (size, frames, steps, ...)."""


class CheckpointError(WanmoeError):
    """A checkpoint file or folder is missing, corrupt, or not what it was given as."""
