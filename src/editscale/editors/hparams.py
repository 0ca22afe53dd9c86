"""The editors' hyperparameter dataclasses (each an :class:`editscale.io.hparams.HParams`).

Torch-free (standard library only) so that :func:`editscale.config.check_config` can build these
dataclasses from a config before any job runs: an unknown key, a value of the wrong type or a
value a dataclass refuses is then reported with its config key at start-up, not as a bare error
inside a job (after Snakemake has already deleted that job's previous outputs). The editor
modules (which import torch) take the same classes from here. :class:`HParamError` and
:func:`check_hparams` (the start-up check) are re-exported from :mod:`editscale.io.hparams`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from editscale.io.hparams import HParamError, HParams, check_hparams

__all__ = [
    "TARGET_POSITIONS",
    "RomeHParams",
    "MemitHParams",
    "EmmetHParams",
    "AlphaEditHParams",
    "EncoreHParams",
    "FtcHParams",
    "MendHParams",
    "MendTrainHParams",
    "HParamError",
    "check_hparams",
]

TARGET_POSITIONS = ("own", "last_prompt")


@dataclass
class RomeHParams(HParams):
    label = "ROME hyperparameters"

    layer: int
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    mom2_adjustment: bool = True
    context_template_lengths: list = field(default_factory=lambda: [[5, 10], [10, 10]])
    context_template_top_k: int = 5
    key_mode: str = "original"  # original | homogeneous (r-ROME)

    def __post_init__(self):
        if self.key_mode not in ("original", "homogeneous"):
            raise ValueError(
                f"rome.key_mode must be 'original' or 'homogeneous', not {self.key_mode!r}"
            )


@dataclass
class MemitHParams(HParams):
    """MEMIT (Meng et al. 2023): the public GPT-J/GPT-2 XL settings are the defaults, except the
    layers (model-specific: GPT-J 3-8, GPT-2 XL 13-17) and ``mom2_update_weight`` (GPT-J 15000,
    GPT-2 XL 20000)."""

    label = "MEMIT hyperparameters"

    layers: list
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    mom2_update_weight: float = 15000.0
    context_template_lengths: list = field(default_factory=lambda: [[10, 5]])
    context_template_starts: list = field(
        default_factory=lambda: ["The", "Therefore", "Because", "I", "You"]
    )
    context_template_top_k: int = 5

    def __post_init__(self):
        if not self.layers or any(
            not isinstance(x, int) or isinstance(x, bool) for x in self.layers
        ):
            raise ValueError(
                f"memit.layers must be a non-empty list of layer indices, not {self.layers!r}"
            )
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(
                f"memit.layers must be increasing without repeats, not {self.layers!r}"
            )
        if self.mom2_update_weight <= 0:
            raise ValueError(
                f"memit.mom2_update_weight must be > 0, not {self.mom2_update_weight!r}"
            )


@dataclass
class EmmetHParams(MemitHParams):
    """EMMET (Gupta et al. 2024): MEMIT's targets, keys and layer spreading with equality
    constraints. Defaults: the public GPT-J settings (one layer; ``mom2_update_weight`` 1)."""

    label = "EMMET hyperparameters"

    mom2_update_weight: float = 1.0
    emmet_lambda: float = (
        0.1  # added to D = K^T C^-1 K (batches of 2 or more) against ill-conditioning
    )
    update_norm_lambda: float = 0.0  # added to C's diagonal

    def __post_init__(self):
        super().__post_init__()
        if self.emmet_lambda < 0 or self.update_norm_lambda < 0:
            raise ValueError("emmet: emmet_lambda and update_norm_lambda must be >= 0")


@dataclass
class AlphaEditHParams(MemitHParams):
    """AlphaEdit (Fang et al. 2025): MEMIT's targets and keys, the update projected onto the null
    space of the preserved keys. Defaults: the public GPT-J / Llama3-8B settings."""

    label = "AlphaEdit hyperparameters"

    v_num_grad_steps: int = 25
    nullspace_threshold: float = 2e-2  # eigenvalues of C below it span the null space
    L2: float = 10.0  # the public name: the update's ridge term

    def __post_init__(self):
        super().__post_init__()
        if self.nullspace_threshold <= 0 or self.L2 <= 0:
            raise ValueError("alphaedit: nullspace_threshold and L2 must be > 0")


@dataclass
class EncoreHParams(MemitHParams):
    """ENCORE (Gupta et al. 2025): MEMIT with most-probable early stopping of the target search
    and a norm penalty on the update. Defaults: the public Llama3-8B settings."""

    label = "ENCORE hyperparameters"

    v_num_grad_steps: int = 25
    update_norm_lambda: float = 20.0  # mu: mu I added to lambda C (the norm penalty)
    prob_cutoff: float = (
        -2.0
    )  # < 0: stop at the |n|-th pass with every target token top-1; > 0: mean prob
    add_prev_edits: bool = True  # the earlier steps' keys join C (sequential editing)

    def __post_init__(self):
        super().__post_init__()
        if self.update_norm_lambda < 0:
            raise ValueError("encore: update_norm_lambda must be >= 0")
        if self.prob_cutoff < 0 and self.prob_cutoff != int(self.prob_cutoff):
            raise ValueError(
                "encore: a negative prob_cutoff counts passes and must be a whole number"
            )


@dataclass
class FtcHParams(HParams):
    label = "FT-C hyperparameters"

    layer: int = 0
    num_steps: int = 25
    lr: float = 5e-4
    norm_constraint: float = 5e-4  # L-infinity radius around the weights before the edit
    early_stop_loss: float = 1e-2
    target_positions: str = "own"  # own | last_prompt (the public baseline's scoring)
    include_bias: bool = False  # also fine-tune (and clamp) the module's bias: the public baseline

    def __post_init__(self):
        if self.target_positions not in TARGET_POSITIONS:
            raise ValueError(
                f"ftc.target_positions must be one of {TARGET_POSITIONS}, "
                f"not {self.target_positions!r}"
            )
        if self.num_steps < 1 or self.lr <= 0 or self.norm_constraint <= 0:
            raise ValueError("ftc: num_steps >= 1, lr > 0 and norm_constraint > 0 are required")
        if not isinstance(self.include_bias, bool):
            raise ValueError(f"ftc.include_bias must be true or false, not {self.include_bias!r}")


@dataclass
class MendHParams(HParams):
    """Edit-time settings (``methods.<m>.hparams``): which matrices, and the public ``lr_scale``."""

    label = "MEND hyperparameters"

    layers: list | None = None  # explicit layers; None = the last ``n_last_layers`` layers
    n_last_layers: int = 3
    lr_scale: float = 1.0

    def layer_indices(self, n_layer: int) -> list[int]:
        """The edited layers (sorted) of a model with ``n_layer`` blocks; ValueError if any is
        outside it."""
        layers = (
            list(self.layers)
            if self.layers is not None
            else list(range(n_layer - self.n_last_layers, n_layer))
        )
        bad = [layer for layer in layers if not 0 <= layer < n_layer]
        if bad or not layers:
            raise ValueError(f"mend layers {layers} are outside the model's {n_layer} layers")
        return sorted(layers)


@dataclass
class MendTrainHParams(HParams):
    label = "MEND training hyperparameters"

    rank: int = 1920
    n_hidden: int = 1
    combine: bool = True
    edit_lr_init: float = 1e-4
    lr: float = 1e-6
    lr_lr: float = 1e-4
    cedit: float = 0.1
    cloc: float = 1.0
    accumulate: int = 10  # training edits per optimiser step
    grad_clip: float = 100.0
    max_steps: int = 100000  # training edits in all
    val_every: int = 5000  # training edits between validations
    early_stop_patience: int = 4  # validations without a lower validation loss
    norm_records: int = 1000
    loc_docs: int = 1000
    loc_max_tokens: int = 128
    checkpoint_every: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.checkpoint_every % self.accumulate or self.val_every % self.accumulate:
            raise ValueError(
                "mend training: checkpoint_every and val_every must be multiples of accumulate"
            )
        if (
            min(
                self.max_steps,
                self.val_every,
                self.norm_records,
                self.loc_docs,
                self.loc_max_tokens,
            )
            < 1
        ):
            raise ValueError(
                "mend training: max_steps, val_every, norm_records, loc_docs, loc_max_tokens >= 1"
            )
