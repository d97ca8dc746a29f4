"""The settings of one training run: architecture and training, saved as JSON in the run folder."""

import dataclasses
import json
import os

from tfp_vae.data import TfpVaeError
from tfp_vae.heads import NORMALIZATIONS
from tfp_vae.model import GaussianVAE, VariationalAutoencoder
from tfp_vae.question import QuestionVAE

MODELS = ("gaussian", "question")
DEFAULT_KL_WEIGHT = {"gaussian": 1.0, "question": 1e-4}
CONFIG_FILE = "config.json"


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
        if self.model not in MODELS:
            raise TfpVaeError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.normalization not in NORMALIZATIONS:
            raise TfpVaeError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
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

    def build_model(self) -> VariationalAutoencoder:
        if self.model == "question":
            return QuestionVAE(self.input_size, self.code_size, self.kl_weight, seed=self.seed)
        return GaussianVAE(self.input_size, self.code_size, self.hidden, self.posterior, self.decoder_scale,
                           self.kl_weight, normalization=self.normalization, seed=self.seed)

    def save(self, run_dir: str) -> None:
        with open(os.path.join(run_dir, CONFIG_FILE), "w") as file:
            json.dump(dataclasses.asdict(self), file, indent=2)

    @classmethod
    def load(cls, run_dir: str) -> "Config":
        path = os.path.join(run_dir, CONFIG_FILE)
        try:
            with open(path) as file:
                return cls(**json.load(file))
        except FileNotFoundError:
            raise TfpVaeError(f"{run_dir}: not a tfp-vae run folder (no {CONFIG_FILE})") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise TfpVaeError(f"{path}: unreadable run config ({error})") from None
