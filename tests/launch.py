"""Starting preftune in other processes, as a user does: the CLI, torchrun with 2 processes, the DeepSpeed
launcher. Every test that calls these is marked ``slow`` (tests/conftest.py enforces it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from toy_env import toy_config

PREFTUNE = [sys.executable, "-m", "preftune"]
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
    "-m",
    "preftune",
]


def run_cli(
    *args: str, cwd: Path | None = None, one_thread: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m preftune ARGS`` (``one_thread``: with OMP_NUM_THREADS=1, as a launcher's processes run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if one_thread else None
    return subprocess.run(
        [*PREFTUNE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


def launch(args: list[str], ok: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a launcher's command line with one thread per process (2 processes share 2 cores); asserts it
    succeeded (``ok``) or failed, showing the end of its stderr otherwise."""
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env}
    )
    assert (result.returncode == 0) == ok, result.stderr[-4000:]
    return result


def train_args(
    launcher: list[str], ws: dict[str, str], out: Path, strategy: str, opts: dict[str, Any]
) -> list[str]:
    """``launcher ... train --key value ...`` for the toy workspace (opts on top of the toy defaults)."""
    cfg = toy_config(ws, out, **opts)
    flat = {
        "output_dir": str(out), "model.name_or_path": ws["model"], "data.train": ws["train"], "data.eval": ws["eval"],
        "data.max_len": cfg.data.max_len, "optim.lr": cfg.optim.lr, "log.progress": "false",
        "strategy.name": strategy, **opts,
    }  # fmt: skip
    args = [*launcher, "train"]
    for key, value in flat.items():
        args += [f"--{key}", str(value)]
    return args
