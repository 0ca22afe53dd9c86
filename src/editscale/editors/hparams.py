"""The editors' hyperparameter dataclasses (each an :class:`editscale.io.hparams.HParams`).

Torch-free (standard library only) so that :func:`editscale.config.check_config` can build these
dataclasses from a config before any job runs: an unknown key, a value of the wrong type or
shape, one outside its range or one a dataclass refuses is then reported with its config key at
start-up, not as a bare error inside a job (after Snakemake has already deleted that job's
previous outputs). Each field declares its values next to it: the annotation its type and shape
(``list[tuple[int, int]]``), :func:`editscale.io.hparams.param` its range or choices; building a
dataclass checks them all (``HParams.__post_init__``), and a class's own ``__post_init__`` adds the
checks across fields. The editor
modules (which import torch) take the same classes from here. :class:`HParamError` and
:func:`check_hparams` (the start-up check) are re-exported from :mod:`editscale.io.hparams`.
"""

from __future__ import annotations

from dataclasses import dataclass

from editscale.io.hparams import HParamError, HParams, check_hparams, param

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
KEY_MODES = ("original", "homogeneous")
MEND_NORMALISATIONS = ("frozen", "authors_running")
MEND_LR_ORDERS = ("trained", "named_parameters")
# a context template pair: [tokens in the prefix, prefixes of that length]
PAIRS = "a list of [length, count] pairs of integers"
PROMPT = (r"\{\}", "contain '{}' (where the subject goes)")


@dataclass
class RomeHParams(HParams):
    label = "ROME hyperparameters"

    layer: int = param(ge=0)
    v_num_grad_steps: int = param(20, ge=1)
    v_lr: float = param(0.5, gt=0)
    v_weight_decay: float = param(0.5, ge=0)
    clamp_norm_factor: float = param(4.0, gt=0)
    kl_factor: float = param(0.0625, ge=0)
    kl_prompt: str = param("{} is a", text=PROMPT)
    early_stop_loss: float = param(0.05, ge=0)
    mom2_adjustment: bool = True
    context_template_lengths: list[tuple[int, int]] = param(
        factory=lambda: [[5, 10], [10, 10]], ge=1, what=PAIRS
    )
    context_template_top_k: int = param(5, ge=1)
    key_mode: str = param("original", choices=KEY_MODES)  # homogeneous: r-ROME


@dataclass
class MemitHParams(HParams):
    """MEMIT (Meng et al. 2023): the public GPT-J/GPT-2 XL settings are the defaults, except the
    layers (model-specific: GPT-J 3-8, GPT-2 XL 13-17) and ``mom2_update_weight`` (GPT-J 15000,
    GPT-2 XL 20000)."""

    label = "MEMIT hyperparameters"

    layers: list[int] = param(ge=0, nonempty=True)
    v_num_grad_steps: int = param(20, ge=1)
    v_lr: float = param(0.5, gt=0)
    v_weight_decay: float = param(0.5, ge=0)
    clamp_norm_factor: float = param(0.75, gt=0)
    kl_factor: float = param(0.0625, ge=0)
    kl_prompt: str = param("{} is a", text=PROMPT)
    early_stop_loss: float = param(0.05, ge=0)
    mom2_update_weight: float = param(15000.0, gt=0)
    context_template_lengths: list[tuple[int, int]] = param(
        factory=lambda: [[10, 5]], ge=1, what=PAIRS
    )
    context_template_starts: list[str] = param(
        factory=lambda: ["The", "Therefore", "Because", "I", "You"], text=(r"\S", "not be blank")
    )
    context_template_top_k: int = param(5, ge=1)

    def __post_init__(self):
        super().__post_init__()
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(
                f"memit.layers must be increasing without repeats, not {self.layers!r}"
            )


@dataclass
class EmmetHParams(MemitHParams):
    """EMMET (Gupta et al. 2024): MEMIT's targets, keys and layer spreading with equality
    constraints. Defaults: the public GPT-J settings (one layer; ``mom2_update_weight`` 1)."""

    label = "EMMET hyperparameters"

    mom2_update_weight: float = param(1.0, gt=0)
    # added to D = K^T C^-1 K (batches of 2 or more) against ill-conditioning
    emmet_lambda: float = param(0.1, ge=0)
    update_norm_lambda: float = param(0.0, ge=0)  # added to C's diagonal


@dataclass
class AlphaEditHParams(MemitHParams):
    """AlphaEdit (Fang et al. 2025): MEMIT's targets and keys, the update projected onto the null
    space of the preserved keys. Defaults: the public GPT-J / Llama3-8B settings."""

    label = "AlphaEdit hyperparameters"

    v_num_grad_steps: int = param(25, ge=1)
    # eigenvalues of C below it span the null space
    nullspace_threshold: float = param(2e-2, gt=0)
    L2: float = param(10.0, gt=0)  # the public name: the update's ridge term


@dataclass
class EncoreHParams(MemitHParams):
    """ENCORE (Gupta et al. 2025): MEMIT with most-probable early stopping of the target search
    and a norm penalty on the update. Defaults: the public Llama3-8B settings."""

    label = "ENCORE hyperparameters"

    v_num_grad_steps: int = param(25, ge=1)
    update_norm_lambda: float = param(20.0, ge=0)  # mu: mu I added to lambda C (the norm penalty)
    # < 0: stop at the |n|-th pass with every target token top-1; > 0: at this mean probability
    # of the target; 0: no early stop
    prob_cutoff: float = param(-2.0, le=1)
    add_prev_edits: bool = True  # the earlier steps' keys join C (sequential editing)

    def __post_init__(self):
        super().__post_init__()
        if self.prob_cutoff < 0 and self.prob_cutoff != int(self.prob_cutoff):
            raise ValueError(
                "encore: a negative prob_cutoff counts passes and must be a whole number"
            )


@dataclass
class FtcHParams(HParams):
    label = "FT-C hyperparameters"

    layer: int = param(0, ge=0)
    num_steps: int = param(25, ge=1)
    lr: float = param(5e-4, gt=0)
    # L-infinity radius around the weights before the edit
    norm_constraint: float = param(5e-4, gt=0)
    early_stop_loss: float = param(1e-2, ge=0)
    # last_prompt: the public baseline's scoring
    target_positions: str = param("own", choices=TARGET_POSITIONS)
    include_bias: bool = False  # also fine-tune (and clamp) the module's bias: the public baseline


@dataclass
class MendHParams(HParams):
    """Edit-time settings (``methods.<m>.hparams``): which matrices, and the public ``lr_scale``."""

    label = "MEND hyperparameters"

    # explicit layers; None = the last ``n_last_layers`` layers
    layers: list[int] | None = param(None, ge=0, nonempty=True)
    n_last_layers: int = param(3, ge=1)
    lr_scale: float = param(1.0, gt=0)
    # frozen: the editor file's factor statistics, as an editor in eval mode normalises;
    # authors_running: the statistics of every factor row edited so far, restarted at the first
    # edit and updated before each edit's rows are normalised, shared by the matrices of one shape
    # (the public GradientTransform in training mode, as the paper's authors ran it)
    normalisation: str = param("frozen", choices=MEND_NORMALISATIONS)
    # which matrix each learned edit learning rate of a public editor file scales: "trained" (the
    # order of the public training config's inner_params) or "named_parameters" (the model's
    # parameter order, as the authors' executor applied them: on GPT-2 the two orders differ)
    public_lr_order: str = param("trained", choices=MEND_LR_ORDERS)

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

    rank: int = param(1920, ge=1)
    n_hidden: int = param(1, ge=0)  # hidden layers of each gradient network (n_hidden + 1 layers)
    combine: bool = True
    edit_lr_init: float = param(1e-4, gt=0)
    lr: float = param(1e-6, gt=0)
    lr_lr: float = param(1e-4, ge=0)  # 0: the edit learning rates stay at edit_lr_init
    cedit: float = param(0.1, ge=0)
    cloc: float = param(1.0, ge=0)
    accumulate: int = param(10, ge=1)  # training edits per optimiser step
    grad_clip: float = param(100.0, gt=0)
    max_steps: int = param(100000, ge=1)  # training edits in all
    val_every: int = param(5000, ge=1)  # training edits between validations
    early_stop_patience: int = param(4, ge=1)  # validations without a lower validation loss
    norm_records: int = param(1000, ge=1)
    loc_docs: int = param(1000, ge=1)
    loc_max_tokens: int = param(128, ge=1)
    checkpoint_every: int = param(1000, ge=1)
    seed: int = param(0, ge=0)

    def __post_init__(self):
        super().__post_init__()
        if self.checkpoint_every % self.accumulate or self.val_every % self.accumulate:
            raise ValueError(
                "mend training: checkpoint_every and val_every must be multiples of accumulate"
            )
