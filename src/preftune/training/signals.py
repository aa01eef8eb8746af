"""Graceful stop on SIGTERM / SIGINT: the first signal asks the trainer to finish its step and checkpoint;
a second one exits at once (safe: checkpoints are only ever renamed into place when complete)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


class GracefulStop:
    """Installs handlers while active; ``requested`` holds the first signal's name, or None."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(f"preftune: second {name}: exiting now without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = name
        print(f"preftune: {name} received: finishing this step and writing a checkpoint (send again to exit now)",
              file=sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def __call__(self) -> bool:
        return self.requested is not None
