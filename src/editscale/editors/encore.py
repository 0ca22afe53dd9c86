"""ENCORE: early stopping and norm-constrained robust knowledge editing (Gupta et al. 2025).

MEMIT (:mod:`editscale.editors.memit`) with the public code's (scalable-model-editing/
knowledge-editing-regularization ``encore/encore_main.execute_encore``, its default least-squares
path: ``use_gd`` false) two changes against norm growth over long edit sequences:

* **Most-probable early stopping** (MPES) of the target search: ``prob_cutoff`` -2 stops the
  optimisation at the second pass at which the new target is the top-1 prediction after the
  rewriting prompts (:class:`MostProbableStop`, the stop rule handed to the shared v*
  optimisation :func:`editscale.editors.rome.optimise_delta`).
* **Norm penalty and earlier edits.** The update solves
  (lambda C + mu I + sum_{earlier steps} K K^T + K K^T) adj = K and dW = R adj^T, with mu =
  ``update_norm_lambda``: mu I penalises ||dW||_F, and (``add_prev_edits``) the keys of every
  earlier step, read as that step used them, are preserved like the statistics' keys.

The earlier steps' keys are carried in the trajectory file (``keys_<i>`` per edited layer,
:attr:`EditResult.carry`) and committed after each step and, in order, on resume: a resumed run
continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editscale.editors.hparams import EncoreHParams
from editscale.editors.memit import CarriedKeysEditor
from editscale.editors.memit import make_editor as _make_memit_editor


@dataclass
class MostProbableStop:
    """ENCORE's most-probable early stopping (public ``encore/compute_z.py``), a
    :class:`editscale.editors.rome.StopRule`: asked after a forward pass and before its update.

    ``cutoff`` < 0: stop at the |cutoff|-th pass (counted over the whole optimisation, not
    consecutively) at which every target token is the argmax after every rewriting prompt but the
    first (the public code skips row 0); > 0: stop once the mean over prompts of
    exp(-mean token NLL) exceeds it. One instance per optimisation (``passes`` counts)."""

    cutoff: float
    passes: int = 0

    def __call__(self, logp: torch.Tensor, tgt: torch.Tensor, nll_tok: torch.Tensor) -> bool:
        n_rw, m = nll_tok.shape
        if self.cutoff < 0:
            top = logp.view(n_rw, m, -1)[1:].argmax(-1)
            if bool((top == tgt[None]).all()):
                self.passes += 1
                return self.passes == abs(int(self.cutoff))
            return False
        return float(torch.exp(-nll_tok.sum(1) / m).mean()) > self.cutoff


class EncoreEditor(CarriedKeysEditor):
    name = "encore"
    hparams_cls = EncoreHParams

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_keys: dict[int, torch.Tensor] = {}

    def _stop_rule(self) -> MostProbableStop | None:
        """A fresh most-probable stop for each target search (none when ``prob_cutoff`` is 0)."""
        return MostProbableStop(float(self.hp.prob_cutoff)) if self.hp.prob_cutoff else None

    def _adjusted_keys(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        c = self.hp.mom2_update_weight * self.c[layer]
        if self.hp.update_norm_lambda:
            c = c + self.hp.update_norm_lambda * torch.eye(
                c.shape[0], dtype=c.dtype, device=c.device
            )
        if self.hp.add_prev_edits:
            c = c + self.kept[layer]
        self._step_keys[layer] = k
        return torch.linalg.solve(c + k @ k.T, k)

    def _carry(self, records: list[dict]) -> dict[str, torch.Tensor]:
        """The keys as this step's updates used them (read before each layer's own update)."""
        return {
            f"keys_{i}": self._step_keys.pop(x).T.contiguous() for i, x in enumerate(self.hp.layers)
        }


def make_editor(
    model, tok, hparams: dict, second_moment, seed: int, state: dict | None = None
) -> EncoreEditor:
    """Build an ENCORE editor (as :func:`editscale.editors.memit.make_editor`); no earlier edits
    yet."""
    return _make_memit_editor(
        model, tok, hparams, second_moment, seed, state=state, editor_cls=EncoreEditor
    )
