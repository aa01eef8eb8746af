"""DeepSpeed ZeRO stages 0-3 behind the Strategy protocol; the engine owns gradient reduction, clipping and its
checkpoints, the trainer says where each step ends. On a machine without CUDA it runs on CPU
(``DS_ACCELERATOR=cpu``, gloo).
"""

from __future__ import annotations

import contextlib
import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..config import Config, ConfigError
from .distributed import DDPStrategy
from .mixing import mix_, paired_parameters
from .state import load_scheduler, save_scheduler

CHECKPOINT_TAG = "deepspeed"


def _is_zero3(module: nn.Module) -> bool:
    """The module's parameters are ZeRO-3 partitioned (a reference held in an inference engine)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def default_cpu_accelerator() -> None:
    """Without CUDA, DeepSpeed runs on CPU (``DS_ACCELERATOR=cpu``) unless the environment already says otherwise.

    Call it before anything imports deepspeed: the import probes for an accelerator and, finding none, warns
    "Setting accelerator to CPU ... we were unable to detect it". Transformers' model loading imports deepspeed
    (through accelerate) whenever both are installed, so without this every command printed that warning,
    DeepSpeed strategy or not; the CLI calls it first thing.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def import_deepspeed() -> Any:
    default_cpu_accelerator()
    try:
        import deepspeed
    except ImportError:
        raise ConfigError(
            "strategy.name: deepspeed is not installed; install it with: pip install 'preftune[deepspeed]'"
        ) from None
    return deepspeed


def _set_default(config: dict[str, Any], path: str, value: Any, flag: str) -> None:
    """Fill ``path`` (dotted) from our flag where the user's JSON leaves it out; a different value is a conflict."""
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    if leaf in node and node[leaf] != value:
        raise ConfigError(
            f"strategy.config sets {path} = {node[leaf]!r} but {flag} gives {value!r}; make them agree"
        )
    node[leaf] = value


def build_ds_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON: the user's file (strategy.config) first, our flags filling what it leaves out."""
    s = cfg.strategy
    user: dict[str, Any] = {}
    if s.config:
        path = Path(s.config)
        try:
            user = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"strategy.config: cannot read {path}: {exc}") from None
    t = cfg.train
    accumulation = t.batch_size // (t.micro_batch_size * world_size)
    _set_default(user, "train_micro_batch_size_per_gpu", t.micro_batch_size, "train.micro_batch_size")
    # The engine checks train_batch_size = micro x accumulation x world against these; where a step ends is
    # the trainer's to say (DeepSpeedStrategy.accumulate), so a token budget may run more micro-steps.
    _set_default(
        user, "gradient_accumulation_steps", accumulation, "train.batch_size / (micro_batch_size x world)"
    )
    _set_default(user, "train_batch_size", t.batch_size, "train.batch_size")
    _set_default(user, "gradient_clipping", cfg.optim.max_norm, "optim.max_norm")
    if (
        "zero_optimization" not in user
        or "stage" not in user["zero_optimization"]
        or s.zero_stage is not None
    ):
        _set_default(
            user,
            "zero_optimization.stage",
            2 if s.zero_stage is None else s.zero_stage,
            "strategy.zero_stage",
        )
    if s.offload_optimizer:
        _set_default(user, "zero_optimization.offload_optimizer.device", "cpu", "strategy.offload_optimizer")
        # Our optimizer is a plain torch AdamW; let DeepSpeed run it on the offloaded fp32 master weights.
        user.setdefault("zero_force_ds_cpu_optimizer", False)
    if s.offload_params:
        if user["zero_optimization"]["stage"] != 3:
            raise ConfigError("strategy.offload_params: parameter offload needs strategy.zero_stage 3")
        _set_default(user, "zero_optimization.offload_param.device", "cpu", "strategy.offload_params")
    if cfg.model.dtype == "bfloat16":
        _set_default(user, "bf16.enabled", True, "model.dtype bfloat16")
    user.setdefault("steps_per_print", 10**9)  # preftune logs its own metrics
    return user


class DeepSpeedStrategy(DDPStrategy):
    """ZeRO-sharded training through ``deepspeed.initialize``; the reference in an inference-only ZeRO-3 engine
    when the stage is 3 (sharded, forward only), otherwise a plain frozen copy (on CPU with ``ref_offload``)."""

    def __init__(
        self, ds_config: dict[str, Any], accumulation_steps: int = 1, ref_offload: bool = False
    ) -> None:
        self.deepspeed = import_deepspeed()
        self.deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        super().__init__(accumulation_steps, ref_offload)
        self.ds_config = ds_config
        self.stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        self._optimizer: torch.optim.Optimizer | None = None

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    def prepare_model(self, module: nn.Module, trainable: bool) -> nn.Module:
        if trainable:
            engine, *_ = self.deepspeed.initialize(
                model=module, optimizer=self._optimizer, config=self.ds_config
            )
            return engine
        if self.stage == 3 and not self.ref_offload:
            inference = {
                "train_micro_batch_size_per_gpu": self.ds_config["train_micro_batch_size_per_gpu"],
                "zero_optimization": {"stage": 3},
                **({"bf16": self.ds_config["bf16"]} if "bf16" in self.ds_config else {}),
            }
            engine, *_ = self.deepspeed.initialize(model=module, config=inference)
            return engine
        return module.to("cpu" if self.ref_offload else self.device)

    def unwrap(self, module: nn.Module) -> nn.Module:
        return getattr(module, "module", module)

    def accumulate(self, module: nn.Module, is_last_micro_step: bool) -> AbstractContextManager[Any]:
        # The trainer says where a step ends, not the engine's micro-step counter against its fixed
        # gradient_accumulation_steps: a token budget (train.micro_batch_tokens) splits steps into varying
        # counts. ZeRO reduces (and its optimizers reset their own micro-step ids) on this flag alone.
        engine: Any = module
        engine.set_gradient_accumulation_boundary(is_last_micro_step)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        engine: Any = module
        engine.backward(loss, scale_wrt_gas=False)  # the trainer weighted the loss by its share of the step

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, module: nn.Module, scheduler: Any, max_norm: float
    ) -> float:
        engine: Any = module
        engine.step()  # at the boundary the last accumulate set: clips (gradient_clipping), updates, zeroes
        if scheduler is not None:
            scheduler.step()  # our LambdaLR edits the same param-group dicts the engine's optimizer reads
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save_state(
        self,
        folder: Path,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        client_state: dict[str, Any],
    ) -> None:
        engine: Any = module
        engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG, client_state=dict(client_state))
        if self.is_main():
            save_scheduler(folder, scheduler)

    def load_state(
        self, folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
    ) -> None:
        engine: Any = module
        if not (folder / CHECKPOINT_TAG).is_dir():
            raise ConfigError(f"ckpt.resume: {folder} was not written by the deepspeed strategy")
        engine.load_checkpoint(
            str(folder),
            tag=CHECKPOINT_TAG,
            load_optimizer_states=optimizer is not None,
            load_lr_scheduler_states=False,
        )
        load_scheduler(folder, scheduler)

    def mix_weights(self, target: nn.Module, source: nn.Module, alpha: float) -> None:
        """Under ZeRO-3 partition by partition: both engines split each parameter alike (its flattened elements
        in world-size slices), so each process mixes the slice it holds. A whole tensor is mixed too where the
        reference keeps one: offloaded to CPU (ref.offload), or a small parameter ZeRO-3 keeps gathered
        (persistent), whose forward reads the whole tensor, not the slice."""
        if self.stage != 3:
            super().mix_weights(target, source, alpha)
            return
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        available = ZeroParamStatus.AVAILABLE
        for name, mine, theirs in paired_parameters(self.unwrap(target), self.unwrap(source)):
            ours, other = cast(Any, mine), cast(Any, theirs)  # ZeRO-3 adds attributes torch does not declare
            if hasattr(ours, "ds_tensor"):
                if ours.ds_tensor.numel() != other.ds_tensor.numel():
                    raise ValueError(f"{name}: the reference is partitioned differently from the policy")
                mix_(ours.ds_tensor, other.ds_tensor, alpha)
            if not hasattr(ours, "ds_tensor") or ours.ds_status == available:
                gathered = getattr(theirs, "ds_status", available) != available
                with self.deepspeed.zero.GatheredParameters([theirs], enabled=gathered):
                    mix_(mine.data, theirs.data, alpha)

    def save_frozen(self, folder: Path, module: nn.Module) -> None:
        """A ZeRO-3 engine's weights gathered one parameter at a time into a safetensors file on the main
        process (DCP cannot read ZeRO-3 partitions); any other module through DCP."""
        if not _is_zero3(module):
            super().save_frozen(folder, module)
            return
        weights: dict[str, Tensor] = {}
        for name, param in self.unwrap(module).named_parameters():
            with self.deepspeed.zero.GatheredParameters([param]):
                if self.is_main():
                    weights[name] = param.data.detach().cpu().clone()
        if self.is_main():
            from safetensors.torch import save_file

            folder.mkdir()
            save_file(weights, str(folder / "model.safetensors"))
        self.barrier()

    def load_frozen(self, folder: Path, module: nn.Module) -> None:
        if not _is_zero3(module):
            super().load_frozen(folder, module)
            return
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors")) if self.is_main() else {}
        for name, param in self.unwrap(module).named_parameters():
            # DeepSpeed's documented way to set a partitioned parameter: the main process writes the gathered
            # tensor, the engine broadcasts and re-partitions it on exit.
            with self.deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
                if self.is_main():
                    param.data.copy_(weights[name])

    def full_state_dict(self, module: nn.Module) -> dict[str, Tensor] | None:
        inner = self.unwrap(module)
        params = list(inner.parameters())
        gather = (
            self.deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.stage == 3 else None
        )
        with gather or contextlib.nullcontext():
            state = (
                {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
                if self.is_main()
                else None
            )
        return state
