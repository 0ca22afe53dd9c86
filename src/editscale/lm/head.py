"""The LM head's product on a few rows, computed in slices of the vocabulary on a CPU.

The v* search reads the head at 6 m + 1 rows per step (m target tokens) and the scoring at one
row per prompt. For fewer than 16 rows of a float32 product MKL uses another kernel for
``F.linear``'s ``x @ W.T``, slow on a head's tall matrix. On SmolLM2's head (49,152 x 576, one
thread, Intel Xeon VM, MKL 2024.2; ``benchmarks/bench_head.py``) the whole product took 35 ms at 7
rows and 63 ms at 13, the same product taken 512 vocabulary rows at a time 21 and 31 ms; slices
were slower at 1-3 rows (12-14 against 10-12 ms) and alike from 16 rows on (24-39 ms either way).
Each logit is the same dot product either way, and the slices came out bitwise equal to the whole
product at every row count measured (1-25), so slicing changes the time, not the numbers.
:class:`SlicedHead` slices only where it was measured to help: float32 on a CPU, 4 to 15 rows
(:data:`SLICED_ROWS`), a head whose weights take no gradient. Its backward is the whole
product's (``grad @ W``), as autograd's for ``F.linear``.
"""

from __future__ import annotations

import torch
from torch import nn

SLICED_ROWS = range(4, 16)
"""The row counts whose product is sliced (below 16: MKL's small-row kernel; below 4 it is fast)."""

SLICE = 512
"""Vocabulary rows per slice (256-768 measured alike on SmolLM2's head)."""


class _SlicedProduct(torch.autograd.Function):
    """``x @ weight.T + bias`` in vocabulary slices; the gradient of ``x`` only."""

    @staticmethod
    def forward(ctx, x, weight, bias, size):
        ctx.save_for_backward(weight)
        out = x.new_empty(x.shape[0], weight.shape[0])
        for start in range(0, weight.shape[0], size):
            part = slice(start, start + size)
            if bias is None:
                torch.mm(x, weight[part].t(), out=out[:, part])
            else:
                torch.addmm(bias[part], x, weight[part].t(), out=out[:, part])
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad.mm(weight), None, None, None


class SlicedHead(nn.Module):
    """``linear`` (an ``nn.Linear`` LM head), its product on few rows taken in slices of
    ``size`` vocabulary rows (default :data:`SLICE`; see the module docstring); elsewhere
    ``linear`` itself."""

    def __init__(self, linear: nn.Linear, size: int | None = None):
        super().__init__()
        size = SLICE if size is None else size
        if size < 1:
            raise ValueError(f"the slice size must be at least 1, not {size}")
        self.linear, self.size = linear, size

    def takes_slices(self, x: torch.Tensor) -> bool:
        """Whether the product on ``x`` is taken in slices."""
        w, b = self.linear.weight, self.linear.bias
        trains = torch.is_grad_enabled() and (
            w.requires_grad or (b is not None and b.requires_grad)
        )
        return (
            x.dim() == 2
            and x.shape[0] in SLICED_ROWS
            and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.float32
            and not trains
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes_slices(x):
            return self.linear(x)
        return _SlicedProduct.apply(x.contiguous(), self.linear.weight, self.linear.bias, self.size)


def sliced(head: nn.Module) -> nn.Module:
    """``head`` as a :class:`SlicedHead` when it is an ``nn.Linear``; another module as it is."""
    return SlicedHead(head) if isinstance(head, nn.Linear) else head
