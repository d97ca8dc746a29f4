"""The settings of one training run, and every choice and default the command line offers.

TensorFlow-free, so the command line can read its choices and defaults, and check
what it is given, before TensorFlow loads. The run folder keeps a `Config` as
JSON (`tfp_vae.runs`).
"""

import dataclasses
import math

from tfp_vae.errors import TfpVaeError

MODELS = ("gaussian", "question")
POSTERIORS = ("full", "diagonal")
NORMALIZATIONS = ("standardize", "whiten")
# The decoder likelihoods of `GaussianVAE` by name (`tfp_vae.likelihoods.LIKELIHOODS`).
DECODER_SCALES = ("learned", "shared", "optimal", "fixed", "full", "student_t")
# Per-feature transforms before the normaliser (`tfp_vae.transforms.TRANSFORMS`).
TRANSFORMS = ("none", "log", "yeo_johnson")
# Why a cell is missing (`tfp_vae.missingness.MECHANISMS`).
MISSING_MECHANISMS = ("at-random", "self-masking", "self-masking-high", "self-masking-low")
STRATEGIES = ("default", "mirrored", "multiworker")
SELECTS = ("auto", "none")
DEFAULT_KL_WEIGHT = {"gaussian": 1.0, "question": 1e-4}
MAX_SEED = 2**31 - 1  # seeds reach TensorFlow's stateless random ops as int32
MAX_VERSION = 2**63 - 1  # TF Serving reads an export's version folder name as an int64
LIKELIHOOD_SAMPLES = 1000  # importance draws per row of a log-likelihood: `evaluate`, the choice of a model
# What `select="none"` trains where a setting is left open (None): tfp_vae 0.1's fixed defaults.
FIXED_DEFAULTS = {"code_size": 2, "hidden": (64, 64), "normalization": "standardize", "decoder_scale": "learned",
                  "transform": "none",
                  "kl_warmup_epochs": 0, "early_stopping_patience": 0, "epochs": 100, "validation_split": 0.1,
                  "passes_per_epoch": 1, "em_prior_rows": 1.0}


def incompatibility(normalization: str | None, decoder_scale: str | None, transform: str | None = None,
                    nll_beta: float = 0.0, allow_missing: bool = False,
                    missing_mechanism: str = "at-random", importance_samples: int = 1) -> str | None:
    """Why a normalisation, a decoder likelihood, a transform, beta-NLL, missing cells and the training bound
    cannot go together."""
    if normalization == "whiten" and decoder_scale == "student_t":
        return "decoder_scale='student_t' works in standardised units: normalization='standardize'"
    if transform not in (None, "none") and decoder_scale == "student_t":
        return (f"transform={transform!r} needs a Gaussian decoder (its raw means are Gaussian integrals): "
                "not decoder_scale='student_t'")
    if nll_beta and decoder_scale not in (None, "learned"):
        return f"nll_beta weighs a learned sigma(z): decoder_scale='learned', not {decoder_scale!r}"
    if nll_beta and importance_samples > 1:
        return ("nll_beta reweighs the ELBO's likelihood term; importance_samples > 1 trains on the "
                "importance-weighted bound instead: choose one")
    if missing_mechanism != "at-random" and not allow_missing:
        return f"missing_mechanism={missing_mechanism!r} models why cells are missing: it needs allow_missing=True"
    if missing_mechanism != "at-random" and (normalization == "whiten" or decoder_scale in ("full", "student_t")
                                             or nll_beta):
        return (f"missing_mechanism={missing_mechanism!r} draws each missing cell from a per-feature Gaussian "
                "decoder: normalization='standardize', decoder_scale 'learned', 'shared', 'optimal' or 'fixed', "
                "no nll_beta")
    if missing_mechanism != "at-random" and transform not in (None, "none"):
        return (f"missing_mechanism={missing_mechanism!r} tells the missing values from the decoder's Gaussian shape; "
                "a transform fitted to the observed cells, which that mechanism says are not representative, "
                "reshapes it (its tail extrapolates): transform='none'")
    correlated = normalization == "whiten" or decoder_scale == "full"
    if allow_missing and correlated and decoder_scale == "optimal":
        return ("with allow_missing=True, whitening scores the observed cells' Gaussian marginal, whose sigma the "
                "sigma-VAE cannot fit from one batch: decoder_scale='learned' or 'shared', or "
                "normalization='standardize'")
    if allow_missing and correlated and nll_beta:
        return ("nll_beta weighs each feature's own term; with allow_missing=True, whitening and decoder_scale='full' "
                "score the observed cells together: normalization='standardize' with a per-feature decoder")
    return None


@dataclasses.dataclass
class Config:
    """What `tfp_vae.train` needs besides the data.

    A setting left at None is open: with `select="auto"` (the default) the
    architecture's open settings (`normalization`, `transform`, `decoder_scale`,
    `code_size`, `hidden`) are chosen among candidates by their validation log-likelihood (with
    `allow_missing` and gaps at random, by their fills of validation cells): the simplest
    within one standard error of the best; and
    the schedule's (`epochs`, `passes_per_epoch`, `kl_warmup_epochs`,
    `early_stopping_patience`, `validation_split`) are sized to the number of rows (`tfp_vae.select`); with
    `select="none"` they take `FIXED_DEFAULTS`, and exactly that model is trained.
    A value given pins it. `kl_weight=None` takes the model's default.

    `columns` is the user's column selection (reapplied to later data files);
    `feature_names` names the columns trained on, for the files the CLI writes.
    `integer_columns` are read dequantised, U(-0.5, 0.5) noise added on every
    pass (`tfp_vae.pipeline.dequantized`), and the model's draws round them back
    to whole numbers (`GaussianVAE`); left open, `train` takes every column whose
    values are all integers and records them here; `()` reads every column as given.
    `early_stopping_patience` > 0 stops when the validation loss has not improved
    for that many epochs and keeps the best epoch's weights; it starts watching
    after the `kl_warmup_epochs`, and the validation loss always weighs the KL at
    `kl_weight`, so epochs inside and after a warm-up compare. An epoch passes
    over the training rows `passes_per_epoch` times. `nll_beta` > 0
    trains a learned sigma(z) by beta-NLL (`tfp_vae.losses.beta_nll_log_prob`);
    validation losses and every reported figure stay the log-likelihood.
    `importance_samples` > 1 trains on the importance-weighted bound with that
    many draws per row (MIWAE's objective with gaps; `GaussianVAE`).
    `em_prior_rows` weighs, in rows, the prior under which EM fits whitening's
    covariance to rows with gaps (`tfp_vae.gaps.em_gaussian`); left open, the
    model choice offers the untrained Gaussian both with the prior (1 row) and
    without it (the maximum-likelihood fit), and every other candidate whitens
    with the prior.
    The validation rows are the `validation_fold`-th window of `validation_split`
    of the rows (`tfp_vae.pipeline.in_validation`; windows never overlap). With
    `select="auto"` each candidate is fitted once per fold for `selection_folds`
    folds and scored on every fold's validation rows: left open, four folds of a
    quarter each where a quarter of the rows is under `select.MIN_VALIDATION_ROWS`
    (every row then validates once), else one (`select.held_out`).
    `epochs=0`, for a linear model with a shared scale, trains nothing: the model
    is then exactly the Gaussian its normalisation fits to the training rows
    (`GaussianVAE.to_gaussian`), the full-covariance one where whitened.
    """

    model: str = "gaussian"
    code_size: int | None = None
    hidden: tuple | None = None
    posterior: str = "full"
    normalization: str | None = None
    decoder_scale: str | None = None
    transform: str | None = None
    kl_weight: float | None = None
    nll_beta: float = 0.0
    allow_missing: bool = False
    missing_mechanism: str = "at-random"
    importance_samples: int = 1
    em_prior_rows: float | None = None
    kl_warmup_epochs: int | None = None
    early_stopping_patience: int | None = None
    epochs: int | None = None
    passes_per_epoch: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    validation_split: float | None = None
    validation_fold: int = 0
    selection_folds: int | None = None
    seed: int = 0
    strategy: str = "default"
    select: str = "auto"
    input_size: int | None = None
    columns: list | None = None
    feature_names: list | None = None
    integer_columns: tuple | None = None

    def __post_init__(self):
        if self.hidden is not None:
            self.hidden = tuple(int(width) for width in self.hidden)
        if self.integer_columns is not None:
            self.integer_columns = column_indices(self.integer_columns, self.input_size)
        for name, choices in (("model", MODELS), ("posterior", POSTERIORS), ("normalization", NORMALIZATIONS),
                              ("decoder_scale", DECODER_SCALES), ("transform", TRANSFORMS), ("strategy", STRATEGIES),
                              ("select", SELECTS), ("missing_mechanism", MISSING_MECHANISMS)):
            value = getattr(self, name)
            if value not in choices and not (value is None and name in FIXED_DEFAULTS):
                raise TfpVaeError(f"{name} must be one of {choices}, got {value!r}")
        conflict = incompatibility(self.normalization, self.decoder_scale, self.transform, self.nll_beta,
                                   self.allow_missing, self.missing_mechanism, self.importance_samples)
        if conflict:
            raise TfpVaeError(conflict)
        if self.model == "question" and self.normalization not in (None, "standardize"):
            raise TfpVaeError("the question's model works in raw units: normalization applies to the gaussian model")
        if self.model == "question" and self.transform not in (None, "none"):
            raise TfpVaeError("the question's model works in raw units: transform applies to the gaussian model")
        if self.kl_weight is None:
            self.kl_weight = DEFAULT_KL_WEIGHT[self.model]
        for name, least in (("code_size", 1), ("epochs", 0), ("passes_per_epoch", 1), ("batch_size", 1),
                            ("importance_samples", 1), ("kl_warmup_epochs", 0), ("early_stopping_patience", 0)):
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise TfpVaeError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.untrained and not (self.model == "gaussian" and self.hidden == () and self.decoder_scale == "shared"
                                     and self.missing_mechanism == "at-random"):
            raise TfpVaeError("epochs=0 trains nothing, which leaves a model only where the untrained one is the "
                              "Gaussian of the rows: a linear model (no hidden layers) with decoder_scale='shared' "
                              "and cells missing at random; otherwise epochs must be at least 1")
        if self.hidden is not None and any(width < 1 for width in self.hidden):
            raise TfpVaeError(f"hidden widths must be positive, got {self.hidden}")
        if self.input_size is not None and self.code_size is not None and self.code_size > self.input_size:
            raise TfpVaeError(f"code_size must be at most the number of features ({self.input_size}), "
                              f"got {self.code_size}")
        if not 0 <= self.seed <= MAX_SEED:
            raise TfpVaeError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")
        if self.validation_split is not None and not 0.0 <= self.validation_split < 1.0:
            raise TfpVaeError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if self.selection_folds is not None and self.selection_folds < 1:
            raise TfpVaeError(f"selection_folds must be at least 1, got {self.selection_folds}")
        if self.validation_fold < 0:
            raise TfpVaeError(f"validation_fold must be at least 0, got {self.validation_fold}")
        folds = max(self.validation_fold + 1, self.selection_folds or 1)
        if self.validation_split is not None and folds * self.validation_split > 1.0 + 1e-9:
            raise TfpVaeError(f"{folds} validation folds of validation_split {self.validation_split} would overlap: "
                              f"their number times the split must be at most 1")
        if not 0 < self.learning_rate < math.inf:
            raise TfpVaeError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if self.em_prior_rows is not None and not 0.0 <= self.em_prior_rows < math.inf:
            raise TfpVaeError(f"em_prior_rows must be finite and not negative (0: the maximum-likelihood fit), "
                              f"got {self.em_prior_rows}")
        if not 0.0 <= self.nll_beta <= 1.0:
            raise TfpVaeError(f"nll_beta must be in [0, 1] (0: the likelihood; 0.5: beta-NLL's usual), "
                              f"got {self.nll_beta}")
        if self.model == "question" and self.allow_missing:
            raise TfpVaeError("the question's model cannot leave cells out of its squared error: allow_missing "
                              "applies to the gaussian model")
        if self.model == "question" and self.importance_samples > 1:
            raise TfpVaeError("the question's model trains on its squared error: importance_samples applies to the "
                              "gaussian model")
        if self.model == "question" and self.integer_columns:
            raise TfpVaeError("the question's model takes its rows as given: integer_columns applies to the gaussian "
                              "model")
        if self.model == "question" and self.nll_beta:
            raise TfpVaeError("the question's model has no learned sigma: nll_beta applies to the gaussian model")
        if not 0 <= self.kl_weight < math.inf:
            raise TfpVaeError(f"kl_weight must be finite and not negative (1 gives the ELBO), got {self.kl_weight}")
        if (self.kl_warmup_epochs is not None and self.epochs is not None
                and self.kl_warmup_epochs > self.epochs):
            raise TfpVaeError(f"kl_warmup_epochs must be at most the number of epochs ({self.epochs}), got "
                              f"{self.kl_warmup_epochs}: "
                              "the KL term would never reach its weight")
        if self.early_stopping_patience and self.validation_split == 0:
            raise TfpVaeError("early stopping watches the validation loss: set validation_split above 0")
        if self.selects and self.strategy == "multiworker":
            raise TfpVaeError("choosing the model (select='auto') runs on one machine: pin the model and pass "
                              "select='none' to train it with strategy='multiworker'")
        if self.selects and self.validation_split == 0:
            raise TfpVaeError("choosing the model (select='auto') needs validation rows: set validation_split "
                              "above 0, or select='none'")

    @property
    def untrained(self) -> bool:
        """Whether this config trains nothing (`epochs=0`): its model is the Gaussian its normalisation fits."""
        return self.epochs == 0

    @property
    def selects(self) -> bool:
        """Whether training chooses among candidates: `select="auto"` for the Gaussian VAE."""
        return self.select == "auto" and self.model == "gaussian"

    @property
    def open_settings(self) -> list[str]:
        """The settings left for training to choose or size."""
        return [name for name in FIXED_DEFAULTS if getattr(self, name) is None]

    def with_fixed_defaults(self) -> "Config":
        """This config with every open setting at `FIXED_DEFAULTS` (a code no wider than the data)."""
        fixed = {name: FIXED_DEFAULTS[name] for name in self.open_settings}
        if "code_size" in fixed and self.input_size is not None:
            fixed["code_size"] = min(fixed["code_size"], self.input_size)
        return dataclasses.replace(self, **fixed)


def column_indices(columns, width: int | None) -> tuple:
    """`integer_columns` as sorted distinct indices, each checked against `width` columns (where known)."""
    indices = tuple(sorted({int(column) for column in columns}))
    outside = [column for column in indices if not 0 <= column < (math.inf if width is None else width)]
    if outside:
        raise TfpVaeError("integer_columns must be indices of the data's columns"
                          + (f" (0 to {width - 1})" if width is not None else "") + f", got {outside}")
    return indices


DEFAULTS = Config()
