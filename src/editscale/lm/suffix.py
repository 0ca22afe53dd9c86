"""Running the upper blocks of a model on only the positions that can change.

ROME's v* search (and the five editors that share it) adds a vector to the residual stream after
block L at each row's subject token, then runs blocks L+1.. some twenty times. Under causal
attention every position before that token is the same at every step, in every block: only the
positions from it to the end of the row change. :func:`split_rows` runs the upper blocks once,
without gradients, on each row's unchanging prefix and keeps their keys and values;
:meth:`RowSuffixes.run` then runs only the rest, each row attending to its own prefix through a
key/value cache that never grows (:class:`_FrozenPrefixLayer`).

Layout: a right-padded batch of ``n`` rows; row ``r`` is cut at ``cut[r]`` (its first changing
position, ``0 <= cut[r] < length[r]``). The prefix block is ``(n, P)`` with ``P = max(cut)``; row
``r`` reads its first ``cut[r]`` cached positions. The suffix block is ``(n, S)``, ``S`` the
longest ``length[r] - cut[r]``, left-aligned; its position ``j`` in row ``r`` is the full batch's
position ``cut[r] + j`` (its position id). Positions of the suffix block past a row's end are
padding: they see the row's real positions, so they stay finite, and nothing reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from editscale.lm.models import full_cache, model_attention_mask


class _FrozenPrefixLayer(DynamicLayer):
    """One block's cached prefix keys and values; ``update`` returns them with the new positions
    appended and stores nothing, so every call starts from the same prefix (and autograd graphs of
    earlier calls are never kept)."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        super().__init__()
        if keys is not None:
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


@dataclass
class RowSuffixes:
    """The changing positions of a right-padded batch, and the cached prefix they attend to
    (build with :func:`split_rows`)."""

    cut: torch.Tensor  # (n,) first position of each row's suffix in the full batch
    index: torch.Tensor  # (n, S) full-batch position of each suffix position (clamped)
    valid: torch.Tensor  # (n, S) bool: a real token of its row
    position_ids: torch.Tensor  # (n, S)
    attention: torch.Tensor | dict[str, torch.Tensor]  # (n, 1, S, P + S) additive mask(s)
    cache: Cache | None  # the prefix's keys and values; None when every cut is 0

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n, T, ...) of the full batch at the suffix positions: (n, S, ...)."""
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        return x[rows, self.index]

    def run(self, upper: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The upper blocks' last hidden state (n, S, d) of the suffix inputs ``h`` (n, S, d);
        ``upper`` as :func:`editscale.lm.models.upper_layers_only` yields it."""
        return upper(
            inputs_embeds=h,
            attention_mask=self.attention,
            position_ids=self.position_ids,
            cache=self.cache,
            use_cache=self.cache is not None,
        ).last_hidden_state


@torch.no_grad()
def split_rows(
    model: nn.Module,
    upper: nn.Module,
    first_layer: int,
    resid: torch.Tensor,
    padding_mask: torch.Tensor,
    cut: torch.Tensor,
) -> RowSuffixes:
    """Cut each row of a right-padded batch at ``cut`` and cache the upper blocks' keys and values
    of the positions before it.

    ``resid`` (n, T, d): the residual stream entering block ``first_layer`` (the first block of
    ``upper``), ``padding_mask`` (n, T) the batch's 2-D mask (1 = real token, right padding),
    ``cut`` (n,) long. The prefix pass runs the whole prefix block with the full batch's causal
    mask and position ids, so a row's cached positions are those a full forward computes."""
    lengths = padding_mask.sum(1)
    if bool(((cut < 0) | (cut >= lengths)).any()):
        raise ValueError(
            f"cut positions {cut.tolist()} must lie in [0, length) of {lengths.tolist()}"
        )
    dev = resid.device
    n, p = resid.shape[0], int(cut.max())
    s = int((lengths - cut).max())
    j = torch.arange(s, device=dev)[None]
    valid = j < (lengths - cut)[:, None]
    index = (cut[:, None] + j).clamp(max=resid.shape[1] - 1)
    cache = None
    keys_seen = valid.long()
    if p:
        cache = _prefix_cache(model, upper, first_layer, resid[:, :p], padding_mask[:, :p])
        in_prefix = torch.arange(p, device=dev)[None] < cut[:, None]
        keys_seen = torch.cat([in_prefix.long(), keys_seen], 1)
    return RowSuffixes(
        cut=cut,
        index=index,
        valid=valid,
        position_ids=cut[:, None] + j.expand(n, s),
        attention=model_attention_mask(model, keys_seen, s, resid.dtype),
        cache=cache,
    )


def _prefix_cache(model, upper, first_layer: int, resid, padding_mask) -> Cache:
    """The upper blocks' keys and values of ``resid`` (n, P, d), frozen."""
    n, p = padding_mask.shape
    out = upper(
        inputs_embeds=resid,
        attention_mask=model_attention_mask(model, padding_mask, p, resid.dtype),
        position_ids=torch.arange(p, device=resid.device)[None].expand(n, p),
        cache=full_cache(),
        use_cache=True,
    )
    layers = [
        _FrozenPrefixLayer(layer.keys, layer.values) if i >= first_layer else _FrozenPrefixLayer()
        for i, layer in enumerate(out.cache.layers)
    ]
    return Cache(layers=layers)
