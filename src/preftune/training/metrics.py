"""Metric accumulation (exact sums, reduced across processes) and the sinks they go to."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..losses.rows import at_row_extreme
from ..run_folder import RunFolder
from .objective import row_mean
from .rank_metrics import rank_metric_sums

if TYPE_CHECKING:
    from ..config import Config
    from .objective import MicroBatchLosses

# Sums kept per optimizer step (or per evaluation); each mean is one sum over its count, so a mean over processes
# or micro-batches is exact rather than a mean of means. Per row (a pair's own values on a pair row; "chosen" and
# "rejected" are a row's top- and bottom-scored responses, averaged over ties), except rewards/accuracies, which is
# per ordered pair:
_ROW_SUMS = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "nll", "wpo/weight",
)  # fmt: skip
# Per row too, and logged once a row of more than two responses was seen (a pair's would only repeat accuracy).
_RANK_SUMS = ("rewards/top1_accuracies", "rewards/spearman")


def _term_keys(sums: dict[str, float]) -> list[str]:
    """A loss mixture's per-term sums, ``loss/<name>``, in the order they were first added."""
    return [key for key in sums if key.startswith("loss/")]


class RowStats:
    """Running sums over rows (pairs, and prompts with K scored responses); ``means()`` divides each by its count.

    ``rewards/accuracies`` is over the ordered pairs of the rows (``pairs``: a pair row's one pair; the pairs
    (i, j) of one row with s_i > s_j), and counts those whose reward margin is above the rounding of both
    rewards (``RowLossOutput.rounding``): a margin within rounding of 0 is a tie, the same on every machine, and
    no win. Every other metric is a mean over rows; :mod:`.rank_metrics` says what the rank metrics are.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = dict.fromkeys((*_ROW_SUMS, *_RANK_SUMS), 0.0)
        self.sums.update(rows=0.0, pairs=0.0, wide_rows=0.0, tokens=0.0, skipped_steps=0.0)

    def merge(self, other: RowStats) -> None:
        for key, value in other.sums.items():  # a mixture's loss/<term> sums arrive with its first rows
            self.sums[key] = self.sums.get(key, 0.0) + value

    def add(self, losses: MicroBatchLosses, num_tokens: int) -> None:
        """One micro-batch: its per-row losses and NLLs, the loss output and the responses' log-probs."""
        logps, out = losses.logps, losses.loss
        top, bottom = at_row_extreme(logps, "amax"), at_row_extreme(logps, "amin")
        rewards, policy = out.rewards.detach().float(), logps.policy.detach().float()
        # Float32 sums of per-row values, as a pair run always summed them (a pair row's are its own values).
        chosen, rejected = row_mean(rewards, logps, top), row_mean(rewards, logps, bottom)
        values = {
            "loss": losses.per_row.detach().float().sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/margins": (chosen - rejected).sum(),
            "logps/chosen": row_mean(policy, logps, top).sum(),
            "logps/rejected": row_mean(policy, logps, bottom).sum(),
            "nll": losses.nll.detach().float().sum(),
            # Summed as 0 without loss.wpo, like nll without its term: the trainer drops what a run does not log.
            "wpo/weight": out.weights.float().sum() if out.weights is not None else 0.0,
            **{f"loss/{name}": term.float().sum() for name, term in out.terms.items()},
            **rank_metric_sums(logps, out),
        }
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.sums["rows"] += logps.num_rows
        self.sums["wide_rows"] += float((logps.row.bincount(minlength=logps.num_rows) > 2).sum())
        self.sums["tokens"] += num_tokens

    def means(self, reduced: dict[str, float] | None = None) -> dict[str, float]:
        sums = reduced if reduced is not None else self.sums
        rows, pairs = max(sums["rows"], 1.0), max(sums["pairs"], 1.0)
        out = {key: sums[key] / rows for key in (*_ROW_SUMS, *_term_keys(sums))}
        out["rewards/accuracies"] = sums["rewards/accuracies"] / pairs
        if sums["wide_rows"]:
            out.update({key: sums[key] / rows for key in _RANK_SUMS})
        out["rows"] = sums["rows"]
        out["pairs"] = sums["pairs"]
        out["tokens"] = sums["tokens"]
        out["skipped_steps"] = sums["skipped_steps"]
        return out


class StepWindow:
    """The optimizer steps since the last logged one: their row sums, gradient norms, skipped steps, time."""

    def __init__(self, stats: RowStats | None = None) -> None:
        self.stats = stats if stats is not None else RowStats()
        self.grad_norms: list[float] = []
        self.started = time.perf_counter()

    def add(self, stats: RowStats, grad_norm: float) -> None:
        """A skipped step (non-finite norm: no update) is counted, and its rows are left out of the means."""
        if math.isfinite(grad_norm):
            self.stats.merge(stats)
            self.grad_norms.append(grad_norm)
        else:
            self.stats.sums["skipped_steps"] += 1

    def rates(self, tokens: float) -> dict[str, float]:
        """Mean gradient norm, and ``tokens`` (the window's, summed over processes) per second of wall time."""
        norms = self.grad_norms
        return {
            "grad_norm": sum(norms) / len(norms) if norms else float("nan"),
            "tokens_per_s": tokens / max(time.perf_counter() - self.started, 1e-9),
        }


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _step_of(line: str) -> float:
    """The step a metrics line was logged at; a line cut short by a killed process counts as never written."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class JsonlSink:
    """``metrics.jsonl``: one JSON object per logged step; on resume, lines past the resumed step are dropped
    so the file reads exactly as an uninterrupted run's would."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()
        self.file = path.open("a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError(
                "log.tensorboard needs the tensorboard package: pip install tensorboard"
            ) from exc
        self.writer = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, mode: str, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError("log.wandb needs the wandb package: pip install wandb") from exc
        self.run = wandb.init(project=project, mode=mode, dir=str(run_dir), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class ProgressBar:
    """A tqdm bar over optimizer steps with live loss, accuracy and margin."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if "loss" in metrics:
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.4f}",
                acc=f"{metrics['rewards/accuracies']:.2f}",
                margin=f"{metrics['rewards/margins']:.3f}",
            )
        self.bar.n = step
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class Sinks:
    """Fan-out to every configured sink (only the main process builds any)."""

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks = sinks or []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def build_sinks(args: Config, output_dir: Path, total_steps: int, step: int, is_main: bool) -> Sinks:
    """The sinks ``log.*`` asks for, on the main process; a run resumed at ``step`` > 0 appends to its metrics."""
    if not is_main:
        return Sinks()
    output_dir.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = [JsonlSink(RunFolder(output_dir).metrics, step if step > 0 else None)]
    if args.log.progress:
        sinks.append(ProgressBar(total_steps, step))
    if args.log.tensorboard:
        sinks.append(TensorBoardSink(output_dir / "tensorboard"))
    if args.log.wandb:
        sinks.append(WandbSink(args.log.wandb_project, args.log.wandb_mode, output_dir, args.to_dict()))
    return Sinks(sinks)
