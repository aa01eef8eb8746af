"""``preftune train`` and ``preftune eval`` as functions: build (:mod:`.builder`), resume, fit or evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..data import DataError
from ..run_folder import RunFolder
from .builder import build_trainer, check_output_dir, resume_point
from .report import PlottingUnavailable, write_run_report
from .signals import GracefulStop

__all__ = ["build_trainer", "check_output_dir", "evaluate", "resume_point", "train"]


def train(cfg: Config, log: Any = print) -> Path:
    """Run ``preftune train``; returns the folder of the exported Hugging Face model."""
    # Handlers go in first: under torchrun a signal may arrive while a process is still building, and the
    # default action would kill it and strand its peers; now it means "stop after the first step" instead.
    with GracefulStop() as stop:
        trainer, steps_per_epoch = build_trainer(cfg, need_train=True, log=log)
        consumed = 0
        ckpt = resume_point(cfg)
        if ckpt is not None:
            consumed = trainer.load_checkpoint(ckpt)
            trainer.strategy.print(
                f"resuming from {ckpt} at step {trainer.global_step} ({consumed} pairs consumed)"
            )
        trainer.should_stop = stop
        trainer.fit(cfg, consumed_samples=consumed, num_update_steps_per_epoch=steps_per_epoch)
    if cfg.log.report and trainer.strategy.is_main():
        _write_report(Path(cfg.output_dir), log)
    trainer.strategy.close()
    return RunFolder(Path(cfg.output_dir)).final


def _write_report(output_dir: Path, log: Any) -> None:
    """The report is drawn from files the run has already written, so a missing plotting library or a run
    with nothing to plot (one resumed at its last step only exports) costs the page, never the trained model:
    the run still succeeds, and ``preftune report`` can draw it later."""
    try:
        page = write_run_report([output_dir])
    except (PlottingUnavailable, DataError) as exc:
        log(f"report.html skipped: {exc} (--log.report false silences this)")
        return
    log(f"report: {page}")


def evaluate(cfg: Config, log: Any = print) -> dict[str, float]:
    """Run ``preftune eval``: DPO loss, reward accuracy and margins of the model against the reference."""
    if not cfg.data.eval:
        raise ConfigError("data.eval: no evaluation source given")
    trainer, _ = build_trainer(cfg, need_train=False, log=log)
    metrics = trainer.evaluate()
    trainer.strategy.close()
    return metrics
