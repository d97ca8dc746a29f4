"""tfp_vae: variational autoencoders for real-valued data in TensorFlow Probability."""

from tfp_vae.data import DataError
from tfp_vae.export import export_saved_model
from tfp_vae.losses import implied_sigma
from tfp_vae.model import GaussianVAE, VariationalAutoencoder
from tfp_vae.question import QuestionVAE

__version__ = "0.1.0"

__all__ = ["DataError", "export_saved_model", "GaussianVAE", "QuestionVAE", "VariationalAutoencoder", "implied_sigma", "__version__"]
