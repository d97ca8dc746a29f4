"""The settings of one training run, and every choice and default the command line offers.

TensorFlow-free, so the command line can read its choices and defaults, and check
what it is given, before TensorFlow loads. The run folder keeps a `Config` as
JSON (`tfp_vae.runs`).
"""

import dataclasses

from tfp_vae.errors import TfpVaeError

MODELS = ("gaussian", "question")
POSTERIORS = ("full", "diagonal")
NORMALIZATIONS = ("standardize", "whiten")
# The decoder likelihoods of `GaussianVAE` by name (`tfp_vae.likelihoods.LIKELIHOODS`).
DECODER_SCALES = ("learned", "shared", "optimal", "fixed", "full")
STRATEGIES = ("default", "mirrored", "multiworker")
DEFAULT_KL_WEIGHT = {"gaussian": 1.0, "question": 1e-4}


@dataclasses.dataclass
class Config:
    """What `tfp_vae.train` needs besides the data. `kl_weight=None` takes the model's default.

    `columns` is the user's column selection (reapplied to later data files);
    `feature_names` names the columns trained on, for the files the CLI writes.
    `early_stopping_patience` > 0 stops when the validation loss has not improved
    for that many epochs and keeps the best epoch's weights; it starts watching
    after the `kl_warmup_epochs`, and the validation loss always weighs the KL at
    `kl_weight`, so epochs inside and after a warm-up compare.
    """

    model: str = "gaussian"
    code_size: int = 2
    hidden: tuple = (64, 64)
    posterior: str = "full"
    normalization: str = "standardize"
    decoder_scale: str = "learned"
    kl_weight: float | None = None
    kl_warmup_epochs: int = 0
    early_stopping_patience: int = 0
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    seed: int = 0
    strategy: str = "default"
    input_size: int | None = None
    columns: list | None = None
    feature_names: list | None = None

    def __post_init__(self):
        self.hidden = tuple(int(width) for width in self.hidden)
        for name, choices in (("model", MODELS), ("posterior", POSTERIORS), ("normalization", NORMALIZATIONS),
                              ("decoder_scale", DECODER_SCALES), ("strategy", STRATEGIES)):
            if getattr(self, name) not in choices:
                raise TfpVaeError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.model == "question" and self.normalization != "standardize":
            raise TfpVaeError("the question's model works in raw units: normalization applies to the gaussian model")
        if self.kl_weight is None:
            self.kl_weight = DEFAULT_KL_WEIGHT[self.model]
        for name in ("code_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise TfpVaeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.validation_split < 1.0:
            raise TfpVaeError(f"validation_split must be in [0, 1), got {self.validation_split}")
        if not self.learning_rate > 0:
            raise TfpVaeError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.early_stopping_patience and not self.validation_split:
            raise TfpVaeError("early stopping watches the validation loss: set validation_split above 0")


DEFAULTS = Config()
