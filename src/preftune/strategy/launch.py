"""What the launcher (torchrun, the DeepSpeed launcher) told this process, read from its environment here only;
a process started without one is rank 0 of 1. Imports no torch, so the CLI can ask before anything loads."""

from __future__ import annotations

import os


def launched_rank() -> int:
    """This process's rank among all processes of the run (``RANK``)."""
    return int(os.environ.get("RANK", "0"))


def launched_local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``): the first of each node builds what the node shares."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_world_size() -> int:
    """How many processes the run has (``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
