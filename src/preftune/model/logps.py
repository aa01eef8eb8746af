"""Token log-probs straight from final hidden states, chunk by chunk through the LM head.

Neither the (2B x T x V) logits of a plain forward nor the (N x V) logits of the scored tokens are ever kept:
forward holds one (chunk x V) block at a time, and backward recomputes each block instead of saving it.
On request the same blocks also give each row's logsumexp of z and of 2z (z the logits), without gradient: what
WPO's weight needs (log sum_v p_v^2 = lse(2z) - 2 lse(z)), at no cost when not asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(h @ W.T + b)[target] for N rows of h, in chunks; grads recomputed per chunk.

    Second output: (N, 2) [lse(z), lse(2z)] per row when ``with_lse``, else (0, 2); never differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
        with_lse: bool,
    ) -> tuple[Tensor, Tensor]:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty((hidden.shape[0] if with_lse else 0, 2), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            stop = start + chunk_size
            # Upcast after the matmul, as the HF heads do: the matmul keeps the model's dtype, the softmax is fp32.
            logits = torch.nn.functional.linear(hidden[start:stop], weight, bias).float()
            picked = logits.gather(1, targets[start:stop, None]).squeeze(1)
            log_z = torch.logsumexp(logits, dim=-1)
            out[start:stop] = picked - log_z
            if with_lse:
                lse[start:stop, 0] = log_z
                lse[start:stop, 1] = torch.logsumexp(logits.mul_(2), dim=-1)  # in place: no second block
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(
        ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        # Weight/bias grads accumulate over chunks in fp32 so bf16 runs do not lose the small contributions.
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            h = hidden[start:stop]
            g = grad_out[start:stop].float()
            # d/dz [z_t - logsumexp(z)] = onehot(t) - softmax(z), scaled by the incoming grad.
            dlogits = torch.nn.functional.linear(h, weight, bias).float().softmax(dim=-1)
            dlogits.mul_(-g[:, None])
            dlogits.scatter_add_(1, targets[start:stop, None], g[:, None])
            if grad_h is not None:
                grad_h[start:stop] = (dlogits.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w.addmm_(dlogits.t(), h.float())
            if grad_b is not None:
                grad_b.add_(dlogits.sum(0))
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


def chunked_token_logps(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, chunk_size: int = 1024
) -> Tensor:
    """Per-row log p(targets[i] | hidden[i]) through a linear LM head, as float32.

    hidden: (N, H) final hidden states at the positions that predict each target;
    weight: (V, H) LM-head weight; targets: (N,) token ids. Returns (N,).
    Example: hidden of 3 rows, V = 5, targets [4, 0, 2] -> tensor([-1.61, -1.58, -1.63]) (three log-probs).
    """
    return _token_logps(hidden, weight, targets, bias, chunk_size, with_lse=False)[0]


def chunked_token_logps_lse(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """:func:`chunked_token_logps`, plus each row's (lse(z), lse(2z)) over the vocabulary as an (N, 2) float32
    tensor without gradient, taken from the same logits chunks (z = h @ W.T + b).

    Example: one row with logits z = [0, ln 3] -> lse(z) = ln 4, lse(2z) = ln 10, so log sum_v p_v^2 =
    lse(2z) - 2 lse(z) = ln(10/16).
    """
    return _token_logps(hidden, weight, targets, bias, chunk_size, with_lse=True)


def _token_logps(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, chunk_size: int, with_lse: bool
) -> tuple[Tensor, Tensor]:
    if hidden.shape[0] == 0:
        # No rows: keep the graph connected to the weight so backward still runs (and gives zero grads).
        empty = hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
        return empty, hidden.new_zeros((0, 2), dtype=torch.float32)
    logps, lse = _ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size, with_lse)
    return logps, lse


def naive_token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """The plain path that :func:`chunked_token_logps` must equal: full log_softmax, then gather."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
