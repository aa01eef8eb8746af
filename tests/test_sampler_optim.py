"""Resumable sampler positions and learning-rate schedules, checked against hand-worked values."""

import math

import pytest
import torch

from preftune.config import OptimConfig
from preftune.data.sampler import ResumableSampler
from preftune.training.optim import build_optimizer, build_scheduler


def test_ranks_cover_the_same_global_batches_as_one_process() -> None:
    single = list(ResumableSampler(10, global_batch=4, seed=3))
    assert len(single) == 8 and len(set(single)) == 8  # 10 rows, 2 whole batches of 4
    r0 = list(ResumableSampler(10, 4, 3, rank=0, world_size=2))
    r1 = list(ResumableSampler(10, 4, 3, rank=1, world_size=2))
    assert r0 == single[0::2] and r1 == single[1::2]


def test_epochs_differ_and_resume_skips_exactly() -> None:
    s = ResumableSampler(12, 4, seed=0)
    epoch0 = list(s)
    s.set_epoch(1)
    epoch1 = list(s)
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    s.set_epoch(1, skip=4)
    assert list(s) == epoch1[4:] and len(s) == 8
    with pytest.raises(ValueError, match="multiple of the world size"):
        ResumableSampler(12, 4, 0, rank=0, world_size=2).set_epoch(0, skip=3)


def test_no_shuffle_is_identity_order() -> None:
    assert list(ResumableSampler(5, 2, seed=0, shuffle=False)) == [0, 1, 2, 3]


def _lrs(kind: str, total: int, warmup_ratio: float, min_ratio: float = 0.1) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(2, 2))
    cfg = OptimConfig(lr=1.0, scheduler=kind, warmup_ratio=warmup_ratio, min_lr_ratio=min_ratio)
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_min_lr() -> None:
    lrs = _lrs("cosine_with_min_lr", total=10, warmup_ratio=0.2)
    # warm-up over ceil(0.2*10)=2 steps: 1/2, 2/2; then 0.1 + 0.9 * (1 + cos(pi * (s-2)/8)) / 2
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # = 0.55
    assert lrs[10] == pytest.approx(0.1)


def test_linear_and_constant() -> None:
    assert _lrs("linear", total=4, warmup_ratio=0.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert _lrs("constant", total=3, warmup_ratio=0.5) == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_no_weight_decay_on_vectors() -> None:
    opt = build_optimizer(torch.nn.Linear(3, 2), OptimConfig(weight_decay=0.1))
    decays = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {(2, 3): 0.1, (2,): 0.0}


def test_length_grouping_sorts_within_windows_and_resumes() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (40,), generator=gen).tolist()
    grouped = ResumableSampler(40, global_batch=4, seed=1, lengths=lengths, group_batches=5)
    order = list(grouped)
    plain = list(ResumableSampler(40, global_batch=4, seed=1))
    assert sorted(order) == sorted(plain)  # the same samples, each once
    for window in range(0, 40, 20):  # windows of 5 batches hold the same samples as the plain order's
        assert sorted(order[window : window + 20]) == sorted(plain[window : window + 20])
        batches = [order[b : b + 4] for b in range(window, window + 20, 4)]
        by_length = sorted(plain[window : window + 20], key=lambda i: -lengths[i])
        # each batch is a run of 4 consecutive samples of the window sorted by length
        assert sorted(sorted(lengths[i] for i in b) for b in batches) == sorted(
            sorted(lengths[i] for i in by_length[k : k + 4]) for k in range(0, 20, 4)
        )
    assert order == list(ResumableSampler(40, 4, 1, lengths=lengths, group_batches=5))  # deterministic
    resumed = ResumableSampler(40, 4, 1, lengths=lengths, group_batches=5)
    resumed.set_epoch(0, skip=12)
    assert list(resumed) == order[12:]
    r0 = ResumableSampler(40, 4, 1, rank=0, world_size=2, lengths=lengths, group_batches=5)
    r1 = ResumableSampler(40, 4, 1, rank=1, world_size=2, lengths=lengths, group_batches=5)
    assert list(r0) == order[0::2] and list(r1) == order[1::2]

    # padding saved: sum over batches of (batch size x longest) drops
    def padded_cost(o):
        return sum(4 * max(lengths[i] for i in o[b : b + 4]) for b in range(0, 40, 4))

    assert padded_cost(order) < padded_cost(plain)
