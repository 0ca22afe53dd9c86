"""EMMET: equality-constrained mass model editing (Gupta, Sajewski, Anumanchipalli 2024).

MEMIT's targets, keys and spreading over layers (:mod:`editscale.editors.memit`), with the
public code's (scalable-model-editing/unified-model-editing ``emmet_main.execute_emmet``) closed
form instead of MEMIT's least squares: every edited key is mapped exactly to its target share,
and the preserved keys' outputs change least in the metric of C:

    C' = lambda C + mu I,  D = K^T C'^-1 K (+ emmet_lambda I when the batch has 2 or more keys),
    dW = R D^-1 K^T C'^-1,

with lambda = ``mom2_update_weight``, mu = ``update_norm_lambda``. For one edit this is ROME's
equality constraint with MEMIT's key and target. The public code inverts C' and D explicitly
(``torch.inverse``, falling back to a pseudo-inverse); here both are solves in float64 (a
singular D raises).
"""

from __future__ import annotations

import torch

from editscale.editors.hparams import EmmetHParams
from editscale.editors.memit import MemitEditor
from editscale.editors.memit import make_editor as _make_memit_editor


class EmmetEditor(MemitEditor):
    name = "emmet"
    hparams_cls = EmmetHParams

    def _adjusted_keys(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        c = self.hp.mom2_update_weight * self.c[layer]
        if self.hp.update_norm_lambda:
            c = c + self.hp.update_norm_lambda * torch.eye(
                c.shape[0], dtype=c.dtype, device=c.device
            )
        c_inv_k = torch.linalg.solve(c, k)  # (in, n)
        d = k.T @ c_inv_k
        if d.shape[0] > 1:
            d = d + self.hp.emmet_lambda * torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
        return torch.linalg.solve(d, c_inv_k.T).T  # C'^-1 K D^-1 (D symmetric)


def make_editor(
    model, tok, hparams: dict, second_moment, seed: int, state: dict | None = None
) -> EmmetEditor:
    """Build an EMMET editor (as :func:`editscale.editors.memit.make_editor`)."""
    return _make_memit_editor(
        model, tok, hparams, second_moment, seed, state=state, editor_cls=EmmetEditor
    )
