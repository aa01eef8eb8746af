"""Ways a run stops early, each with the exit code the CLI returns (documented in the README)."""

from __future__ import annotations

EXIT_BAD_INPUT = 2  # ConfigError / DataError: fix the command or the data
EXIT_NONFINITE = 3  # too many non-finite steps in a row
EXIT_CHECKPOINT = 4  # a checkpoint could not be written (disk full, permissions)
EXIT_STOPPED = 75  # stopped by SIGTERM/SIGINT after writing a checkpoint: rerun the same command to resume


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key (exit code 2)."""


class RunStopped(Exception):
    """A run ended early for a reason the user can act on; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class NonFiniteError(RunStopped):
    exit_code = EXIT_NONFINITE


class CheckpointError(RunStopped):
    exit_code = EXIT_CHECKPOINT


class StopRequested(RunStopped):
    exit_code = EXIT_STOPPED
