"""torchrun strategies on PyTorch's own engines: DDP and FSDP2 (``fully_shard``). gloo on CPU, NCCL on GPU.

Launch with ``torchrun --nproc_per_node N -m preftune train ... --strategy.name ddp|fsdp2``; torchrun sets
RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous, nothing here does networking of its own.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .launch import launched_local_rank
from .mixing import mix_, paired_parameters
from .single import SingleProcessStrategy
from .state import full_model_state


def init_process_group() -> tuple[int, int, torch.device]:
    """Join torchrun's group (once); returns (rank, world size, this process's device)."""
    local_rank = launched_local_rank()
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


class DDPStrategy(SingleProcessStrategy):
    """Replicated weights, gradients averaged by DDP; the reference is a plain frozen copy per process."""

    def __init__(self, accumulation_steps: int = 1, ref_offload: bool = False) -> None:
        rank, world_size, device = init_process_group()
        super().__init__(device, accumulation_steps)
        self.rank = rank
        self.world_size = world_size
        self.ref_offload = ref_offload

    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, module: nn.Module, trainable: bool) -> nn.Module:
        if not trainable:
            return module.to("cpu" if self.ref_offload else self.device)
        module = module.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module.module if isinstance(module, DistributedDataParallel) else module

    def accumulate(self, module: nn.Module, is_last_micro_step: bool) -> AbstractContextManager[Any]:
        if isinstance(module, DistributedDataParallel) and not is_last_micro_step:
            return module.no_sync()  # gradients stay local until the last micro-step of the step
        return contextlib.nullcontext()

    def all_reduce_tensor(self, tensor: Tensor, op: str = "sum") -> Tensor:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        if op not in ops:
            raise ValueError(f"unsupported reduce op {op!r}")
        buf = tensor.to(self._reduce_device(), copy=True)  # never reduce into the caller's tensor
        dist.all_reduce(buf, op=ops[op])
        return buf.to(tensor.device)

    def _reduce_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        dist.barrier()

    def full_state_dict(self, module: nn.Module) -> dict[str, Tensor] | None:
        state = full_model_state(module)
        return state if self.is_main() else None

    def print(self, *args: Any) -> None:
        if self.is_main():
            print(*args, flush=True)

    def close(self) -> None:
        # A barrier first: tearing gloo down while a peer still has work in flight aborts the process.
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class FSDP2Strategy(DDPStrategy):
    """Parameters, gradients and optimizer state sharded per decoder layer and at the root (``fully_shard``).

    The reference is sharded too (forward only), or kept whole on CPU with ``ref_offload``.
    """

    def __init__(
        self,
        accumulation_steps: int = 1,
        mixed_precision: str = "none",
        cpu_offload: bool = False,
        ref_offload: bool = False,
    ) -> None:
        super().__init__(accumulation_steps, ref_offload)
        self.mixed_precision = mixed_precision
        self.cpu_offload = cpu_offload
        self._optimizers: list[torch.optim.Optimizer] = []

    def _shard_kwargs(self) -> dict[str, Any]:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        kwargs: dict[str, Any] = {}
        if self.mixed_precision == "bf16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        return kwargs

    def prepare_model(self, module: nn.Module, trainable: bool) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        if not trainable and self.ref_offload:
            return module.to("cpu")
        module = module.to(self.device)
        names = {id(p): n for n, p in module.named_parameters()}
        kwargs = self._shard_kwargs()
        lm: Any = getattr(module, "model", module)
        layers = getattr(lm.get_decoder(), "layers", None) if hasattr(lm, "get_decoder") else None
        for layer in layers or []:
            fully_shard(layer, **kwargs)
        fully_shard(module, **kwargs)
        if trainable:
            self._rebind_optimizers(module, names)
        return module

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Register an optimizer built on the unsharded parameters, so sharding can repoint it."""
        self._optimizers.append(optimizer)

    def _rebind_optimizers(self, module: nn.Module, old_names: dict[int, str]) -> None:
        # fully_shard swaps each parameter for a new DTensor parameter; an optimizer built before (as with
        # OpenRLHF's interface, where the user builds it) must point at the new ones, found by name.
        new = dict(module.named_parameters())
        for optimizer in self._optimizers:
            for group in optimizer.param_groups:
                group["params"] = [
                    new[old_names[id(p)]] if id(p) in old_names else p for p in group["params"]
                ]

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module

    def mix_weights(self, target: nn.Module, source: nn.Module, alpha: float) -> None:
        """Shard by shard: the policy and a sharded reference are split alike (same layers, same mesh), so each
        process mixes its local shards and nothing is communicated. An offloaded reference is whole on every
        process; it takes each policy parameter gathered, one at a time."""
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        for module in (*target.modules(), *source.modules()):
            if isinstance(module, FSDPModule):
                module.reshard()  # a forward-only root may still hold its gathered weights
        for name, mine, theirs in paired_parameters(target, source):
            if isinstance(mine, DTensor) and isinstance(theirs, DTensor):
                if mine.placements != theirs.placements or mine.device_mesh != theirs.device_mesh:
                    raise ValueError(f"{name}: the reference is sharded differently from the policy")
                mix_(mine.to_local(), theirs.to_local(), alpha)
            elif isinstance(mine, DTensor):
                raise ValueError(f"{name}: a sharded reference needs a sharded policy")
            else:
                mix_(mine, theirs.full_tensor() if isinstance(theirs, DTensor) else theirs, alpha)

    def accumulate(self, module: nn.Module, is_last_micro_step: bool) -> AbstractContextManager[Any]:
        set_sync = getattr(module, "set_requires_gradient_sync", None)
        if set_sync is not None:
            set_sync(is_last_micro_step)  # reduce-scatter only on the last micro-step
        return contextlib.nullcontext()
