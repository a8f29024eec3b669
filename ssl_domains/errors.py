"""Error types that the CLI turns into one clear line (exit code 2 for user input, 1 for a failed run)."""

from __future__ import annotations

__all__ = [
    "CheckpointWriteError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "PluginError",
    "Preempted",
    "UserError",
]

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry"


class UserError(Exception):
    """Something the user can fix: bad flags, a bad config value, a missing path or a missing extra.

    The CLI prints ``error: <message>`` and exits with code 2, without a traceback.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config key or value is wrong (unknown key, wrong type, value outside its choices)."""


class DataError(UserError):
    """Input data is unusable. The message names the file and what to do about it."""


class PluginError(UserError):
    """A plugin is unknown, broken or needs an extra that is not installed."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or inf loss; the message names the step. Exit code 1."""

    exit_code = 1


class CheckpointWriteError(RuntimeError):
    """A checkpoint or weights file could not be written (disk full, quota, read-only filesystem).

    The message names the file, the free space and the intact previous checkpoint. Exit code 1.
    """

    exit_code = 1


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGUSR1) and wrote a checkpoint at the current step.

    Exit code 75 (``EX_TEMPFAIL``): the run is incomplete by request, and the same command with
    ``--resume-if-exists`` (or ``--resume DIR``) continues it.
    """

    exit_code = PREEMPTED_EXIT_CODE
