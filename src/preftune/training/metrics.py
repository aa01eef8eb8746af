"""Metric accumulation (exact sums, reduced across processes) and the sinks they go to."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..layouts import PairForward
from ..losses import GroupLogps, GroupLossOutput, LossOutput
from ..run_folder import RunFolder
from .group_metrics import GROUP_METRIC_COUNTS, group_metric_means, group_metric_sums

if TYPE_CHECKING:
    from ..config import Config
    from .objective import MicroBatchLosses

# Sums kept per optimizer step (or per evaluation); each mean is a sum over pairs divided by the pair count,
# so a mean over processes or micro-batches is exact rather than a mean of means.
_PAIR_SUMS = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "nll", "wpo/weight",
)  # fmt: skip


def _term_keys(sums: dict[str, float]) -> list[str]:
    """A loss mixture's per-term sums, ``loss/<name>``, in the order they were first added."""
    return [key for key in sums if key.startswith("loss/")]


class PairStats:
    """Running sums over pairs; ``means()`` divides by the number of pairs seen.

    ``rewards/accuracies`` counts the pairs whose margin is above the rounding of both rewards
    (``LossOutput.rounding``): a margin within rounding of 0 is a tie, the same on every machine, and no win.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = dict.fromkeys(_PAIR_SUMS, 0.0)
        self.sums.update(pairs=0.0, tokens=0.0, skipped_steps=0.0)

    def merge(self, other: PairStats) -> None:
        for key, value in other.sums.items():  # a mixture's loss/<term> sums arrive with its first pairs
            self.sums[key] = self.sums.get(key, 0.0) + value

    def add(self, losses: MicroBatchLosses, num_tokens: int) -> None:
        """One micro-batch: its per-pair (B,) losses and NLLs, the loss output and the policy forward."""
        loss, out, fwd, nll = losses.per_pair, losses.loss, losses.policy, losses.nll
        assert isinstance(out, LossOutput) and isinstance(fwd, PairForward), "a pair batch's losses"
        chosen, rejected = out.chosen_rewards.detach().float(), out.rejected_rewards.detach().float()
        margins = chosen - rejected
        # Within both rewards' rounding of 0 a margin is a tie (see losses.reward_rounding), and a tie is no win.
        band = 0.0 if out.rounding is None else (out.rounding[0] + out.rounding[1]).to(margins.device)
        values = {
            "loss": loss.detach().float().sum(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/margins": margins.sum(),
            "rewards/accuracies": (margins.double() > band).float().sum(),
            "logps/chosen": fwd.chosen_logps.detach().float().sum(),
            "logps/rejected": fwd.rejected_logps.detach().float().sum(),
            "nll": nll.detach().float().sum(),
            # Summed as 0 without loss.wpo, like nll without its term: the trainer drops what a run does not log.
            "wpo/weight": out.weights.float().sum() if out.weights is not None else 0.0,
        }
        values.update({f"loss/{name}": term.float().sum() for name, term in out.terms.items()})
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.sums["pairs"] += chosen.numel()
        self.sums["tokens"] += num_tokens

    def means(self, reduced: dict[str, float] | None = None) -> dict[str, float]:
        sums = reduced if reduced is not None else self.sums
        pairs = max(sums["pairs"], 1.0)
        out = {key: sums[key] / pairs for key in (*_PAIR_SUMS, *_term_keys(sums))}
        out["pairs"] = sums["pairs"]
        out["tokens"] = sums["tokens"]
        out["skipped_steps"] = sums["skipped_steps"]
        return out


class GroupStats(PairStats):
    """Running sums over prompt groups (``data.groups``): the loss per group, and the group metrics of
    :mod:`.group_metrics`, each a mean over its own count at the end."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(("loss", "nll", "groups", "ordered_pairs", *GROUP_METRIC_COUNTS), 0.0)
        self.sums.update(tokens=0.0, skipped_steps=0.0)

    def add(self, losses: MicroBatchLosses, num_tokens: int) -> None:
        """One micro-batch of prompt groups: its per-group losses, the loss output and the GroupLogps."""
        out, fwd = losses.loss, losses.policy
        assert isinstance(out, GroupLossOutput) and isinstance(fwd, GroupLogps), (
            "a prompt-group batch's losses"
        )
        for key, value in group_metric_sums(fwd, out).items():
            self.sums[key] += value
        self.sums["loss"] += float(losses.per_pair.detach().float().sum())
        self.sums["nll"] += float(losses.nll.detach().float().sum())
        self.sums["tokens"] += num_tokens

    def means(self, reduced: dict[str, float] | None = None) -> dict[str, float]:
        sums = reduced if reduced is not None else self.sums
        means = group_metric_means(sums)
        groups = max(sums["groups"], 1.0)
        return {"loss": sums["loss"] / groups, **means, "nll": sums["nll"] / groups, "tokens": sums["tokens"],
                "skipped_steps": sums["skipped_steps"]}  # fmt: skip


class StepWindow:
    """The optimizer steps since the last logged one: their pair sums, gradient norms, skipped steps, time."""

    def __init__(self, stats: PairStats | None = None) -> None:
        self.stats = stats if stats is not None else PairStats()
        self.grad_norms: list[float] = []
        self.started = time.perf_counter()

    def add(self, stats: PairStats, grad_norm: float) -> None:
        """A skipped step (non-finite norm: no update) is counted, and its pairs are left out of the means."""
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
