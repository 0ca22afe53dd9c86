"""What every editor returns, and the one function that applies it to a model.

An edit is a list of :class:`ParamUpdate`, one per edited matrix, either rank-one factors
(``delta = v u^T`` in (out, in) orientation), low-rank factors (``u`` (r, in) and ``v`` (r, out):
``delta = v^T u``, a sum of r outer products; MEND) or a dense delta in (out, in) orientation. The
trajectory runner and the rebuild-from-HDF5 code both call :func:`apply_update`, so weights
rebuilt from a file equal the runner's weights bit for bit on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import ArchSpec, edit_parameter


@dataclass
class ParamUpdate:
    module: str  # module path of the edited matrix, e.g. transformer.h.5.mlp.c_proj
    u: torch.Tensor | None = None  # (in,) rank-one key-side factor, or (r, in) low-rank factors
    v: torch.Tensor | None = None  # (out,) rank-one value-side factor, or (r, out) low-rank factors
    dense: torch.Tensor | None = None  # (out, in) dense delta

    @property
    def kind(self) -> str:
        if self.dense is not None:
            return "dense"
        return "low_rank" if self.u.dim() == 2 else "rank_one"

    def delta_out_in(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        if self.u.dim() == 2:
            return self.v.T @ self.u
        return torch.outer(self.v, self.u)

    def frobenius_norm(self) -> float:
        if self.dense is not None:
            return float(self.dense.double().norm())
        if self.u.dim() == 2:  # ||V^T U||_F^2 = trace((U U^T)(V V^T)), without forming the matrix
            u, v = self.u.double(), self.v.double()
            return float(((u @ u.T) * (v @ v.T)).sum().clamp(min=0).sqrt())
        return float(self.u.double().norm() * self.v.double().norm())


@dataclass
class EditResult:
    updates: list[ParamUpdate]
    info: dict[str, float] = field(default_factory=dict)  # scalar diagnostics (losses, steps)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. ROME's keys and v*, for tests


@torch.no_grad()
def apply_update(weight: torch.Tensor, update: ParamUpdate, spec: ArchSpec) -> None:
    """Add an update to a stored weight in place, in the weight's own orientation and dtype."""
    if update.dense is not None:
        delta = update.dense.T if spec.conv1d else update.dense
    elif update.u.dim() == 2:
        delta = update.u.T @ update.v if spec.conv1d else update.v.T @ update.u
    elif spec.conv1d:
        delta = torch.outer(update.u, update.v)
    else:
        delta = torch.outer(update.v, update.u)
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def apply_updates(model, updates: list[ParamUpdate], spec: ArchSpec) -> None:
    for upd in updates:
        apply_update(edit_parameter(model, upd.module), upd, spec)
