"""AlphaEdit: null-space constrained knowledge editing (Fang et al., ICLR 2025).

MEMIT's targets, keys and spreading over layers (:mod:`editscale.editors.memit`), with the public
code's (jianghoucheng/AlphaEdit ``AlphaEdit_main.apply_AlphaEdit_to_model``) update:

* **Projection.** P = U U^T over the eigenvectors of the layer's key second moment C whose
  eigenvalue is below ``nullspace_threshold`` (the public ``get_project``: singular vectors of C,
  2e-2): the update is confined to directions the preserved knowledge's keys do not use.
* **Update.** dW^T = (P (K K^T + K_p K_p^T) + L2 I)^-1 P K R^T, with K_p K_p^T the sum over every
  earlier step of its keys' K K^T (read after the step's updates, at every edited layer). Since
  dW^T = P dW^T, the update leaves every key in C's span unchanged.
* **Carried state.** K_p K_p^T is what a step leaves to the next: the keys of each step are
  returned in :attr:`EditResult.carry` (``keys_<i>`` for the i-th edited layer, (n, in) float64),
  stored in the trajectory file with the edit, and added by :meth:`AlphaEditEditor.commit` after
  the runner applies the updates, and again in order when it resumes: a resumed run adds the same
  float64 matrices in the same order, so it continues bit for bit.

Differences from the public code: P comes from ``torch.linalg.eigh`` of C in float64 (the public
code: ``torch.linalg.svd`` of the float32 C), and the update is solved in float64 (public: float32);
the accumulated K_p K_p^T is float64 (public: float32).
"""

from __future__ import annotations

import torch

from editscale.editors.hparams import AlphaEditHParams
from editscale.editors.memit import CarriedKeysEditor
from editscale.editors.memit import make_editor as _make_memit_editor


def null_space_projection(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """U U^T over the eigenvectors of the symmetric C with eigenvalue < ``threshold`` (float64)."""
    eigvals, eigvecs = torch.linalg.eigh(c.double())
    u = eigvecs[:, eigvals < threshold]
    return u @ u.T


class AlphaEditEditor(CarriedKeysEditor):
    name = "alphaedit"
    hparams_cls = AlphaEditHParams

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.p = {
            x: null_space_projection(self.c[x], self.hp.nullspace_threshold) for x in self.hp.layers
        }

    def _adjusted_keys(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        p = self.p[layer]
        a = p @ (k @ k.T + self.kept[layer]) + self.hp.L2 * torch.eye(
            p.shape[0], dtype=p.dtype, device=p.device
        )
        return torch.linalg.solve(a, p @ k)  # dW = R adj^T, dW^T = a^-1 P K R^T

    def _carry(self, records: list[dict]) -> dict[str, torch.Tensor]:
        """The keys read on the model after every layer's update (the public code's cache_c)."""
        return {
            f"keys_{i}": self._keys_and_values(records, x)[0].T.contiguous()
            for i, x in enumerate(self.hp.layers)
        }


def make_editor(
    model, tok, hparams: dict, second_moment, seed: int, state: dict | None = None
) -> AlphaEditEditor:
    """Build an AlphaEdit editor (as :func:`editscale.editors.memit.make_editor`); K_p K_p^T
    starts at 0."""
    return _make_memit_editor(
        model, tok, hparams, second_moment, seed, state=state, editor_cls=AlphaEditEditor
    )
