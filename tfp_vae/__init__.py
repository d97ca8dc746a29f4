"""tfp_vae: variational autoencoders for real-valued data in TensorFlow Probability.

The public names load on first use, so `import tfp_vae` stays quick and the
command line can quiet TensorFlow's start-up logging before TensorFlow loads.
The first public name that needs TensorFlow loads it quietly too (without its
C++ start-up lines), unless TensorFlow is loaded already or `TF_CPP_MIN_LOG_LEVEL`
is set, which leaves TensorFlow's logging as you chose it.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

_PUBLIC = {
    "GaussianVAE": "tfp_vae.model",
    "VariationalAutoencoder": "tfp_vae.model",
    "QuestionVAE": "tfp_vae.question",
    "Config": "tfp_vae.config",
    "train": "tfp_vae.training",
    "load_run": "tfp_vae.runs",
    "load_imputer": "tfp_vae.runs",
    "read_history": "tfp_vae.runs",
    "read_candidates": "tfp_vae.runs",
    "selection_summary": "tfp_vae.runs",
    "evaluate": "tfp_vae.evaluation",
    "export_saved_model": "tfp_vae.export",
    "read_table": "tfp_vae.data",
    "DataError": "tfp_vae.errors",
    "TfpVaeError": "tfp_vae.errors",
    "KLWarmup": "tfp_vae.callbacks",
    "implied_sigma": "tfp_vae.losses",
    "run_demo": "tfp_vae.demo",
    "start_tensorflow_quietly": "tfp_vae.quiet",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


# Modules that import no TensorFlow.
_TENSORFLOW_FREE = {"tfp_vae.config", "tfp_vae.data", "tfp_vae.errors", "tfp_vae.quiet"}


def __getattr__(name):
    if name in _PUBLIC:
        module = _PUBLIC[name]
        if (module not in _TENSORFLOW_FREE and "tensorflow" not in sys.modules
                and "TF_CPP_MIN_LOG_LEVEL" not in os.environ):
            from tfp_vae.quiet import start_tensorflow_quietly
            # Devices start quietly too, except where TF_CONFIG says a multiworker strategy will configure them.
            start_tensorflow_quietly(initialize_devices="TF_CONFIG" not in os.environ)
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'tfp_vae' has no attribute {name!r}")


def __dir__():
    return __all__
