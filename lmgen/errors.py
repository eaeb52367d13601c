"""Errors that lmgen reports to users as one line (the CLI maps them to exit codes)."""


class LmgenError(Exception):
    """Base class: a problem with the user's input, not a bug in lmgen."""

    exit_code = 1


class ConfigError(LmgenError):
    """A model config that is unreadable, unsupported or self-contradictory."""

    exit_code = 3


class CheckpointError(LmgenError):
    """A checkpoint directory or file that cannot be loaded as the config describes."""

    exit_code = 3


class InputError(LmgenError):
    """A prompt or option value that lmgen cannot use."""

    exit_code = 2


class EnvironmentFailure(LmgenError):
    """The machine refused: a full disk, a read-only directory, a closed output."""

    exit_code = 4


def printable(text: str, limit: int = 120) -> str:
    """A stranger's text made safe for a one-line error: no newlines or escapes, not too long."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[:limit] + "..."
