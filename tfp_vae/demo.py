"""The main job, end to end: the question's model against the Gaussian VAE on real measurements.

Scikit-learn's breast-cancer data (569 tumours, 30 measurements in raw units from
about 0.001 to over 4,000) is split into training and held-out rows. Both models
train on the raw numbers and the held-out rows are scored in nats: the question's
model with the sigma its loss weighting implies, and, to be fair to it, with the
best single sigma fitted on the training rows. The Gaussian VAE trains as no
flags give it (`Config()`: the model chosen among candidates by validation
log-likelihood, whose table the demo prints), and twice more with fixed settings:
on standardised features, and whitened (`normalization="whiten"`), whose decoder
noise is correlated in raw units, as radius, perimeter and area are. The chosen
model is exported as a SavedModel for TensorFlow Serving.
"""

import json
import os
import time

import numpy as np

from tfp_vae.config import LIKELIHOOD_SAMPLES, Config
from tfp_vae.errors import TfpVaeError
from tfp_vae.files import require_new_folder
from tfp_vae.evaluation import evaluate
from tfp_vae.export import export_saved_model
from tfp_vae.pipeline import in_validation
from tfp_vae.runs import read_candidates, read_history, selection_summary
from tfp_vae.training import train

DEMO_COLUMNS = (
    ("log_likelihood", "held-out log p(x), nats", "{:.1f}"),
    ("log_likelihood_stderr", "+- s.e.", "{:.1f}"),
    ("bits_per_feature", "bits/feature", "{:.2f}"),
    ("mse", "MSE", "{:.4g}"),
    ("coverage_1sigma", "within 1 sigma (68%)", "{:.1%}"),
    ("coverage_2sigma", "within 2 sigma (95%)", "{:.1%}"),
    ("kl", "KL, nats", "{:.1f}"),
)


def load_demo_data():
    """The breast-cancer measurements and their names (needs scikit-learn, which ships them)."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise TfpVaeError("the demo's data ships with scikit-learn: pip install 'tfp-vae[examples]'") from None
    data = load_breast_cancer()
    return data.data.astype(np.float32), [str(name) for name in data.feature_names]


FIXED_EPOCHS = 150
CHOSEN = "gaussian, chosen by the data"


def demo_configs(epochs: int | None, feature_names) -> dict:
    """The demo's models by name; `epochs` None: 150 for the fixed ones, the chosen model's own schedule."""
    fixed_epochs = epochs or FIXED_EPOCHS
    shared = dict(select="none", code_size=8, epochs=fixed_epochs, batch_size=32, learning_rate=2e-3,
                  validation_split=0.1, seed=0, feature_names=list(feature_names))
    gaussian = dict(model="gaussian", hidden=(64, 64), kl_warmup_epochs=fixed_epochs // 3, **shared)
    return {"question": Config(model="question", **shared),
            CHOSEN: Config(epochs=epochs, seed=0, feature_names=list(feature_names)),
            "gaussian": Config(**gaussian), "gaussian, whitened": Config(normalization="whiten", **gaussian)}


def run_folder(name: str) -> str:
    return name.replace(", ", "-").replace(" ", "-")


def results_table(results: dict) -> str:
    """A Markdown table, one row per model."""
    header = "| model | " + " | ".join(title for _, title, _ in DEMO_COLUMNS) + " |"
    rule = "|---" * (len(DEMO_COLUMNS) + 1) + "|"
    rows = ["| " + name + " | " + " | ".join(form.format(metrics[key]) for key, _, form in DEMO_COLUMNS) + " |"
            for name, metrics in results.items()]
    return "\n".join([header, rule, *rows])


def run_demo(out="tfp-vae-demo", epochs: int | None = None, num_samples: int = LIKELIHOOD_SAMPLES,
             verbose: int = 1) -> dict:
    """Trains the models, prints a line per model and their held-out metrics, exports the chosen Gaussian VAE."""
    out = os.fspath(out)
    require_new_folder(out, "out")
    x, names = load_demo_data()
    held_out = in_validation(np.arange(len(x)), 0.2, seed=0)
    x_train, x_test = x[~held_out], x[held_out]
    results = {}
    models = {}
    configs = demo_configs(epochs, names)  # checks `epochs` before anything is said or written
    if verbose:
        print(f"training on {len(x_train)} breast-cancer rows x {x.shape[1]} features, raw units", flush=True)
    for name, config in configs.items():
        started = time.perf_counter()
        models[name] = train(config, x_train, os.path.join(out, run_folder(name)), verbose=0)
        results[name] = evaluate(models[name], x_test, num_samples=num_samples)
        if verbose:
            epochs_run = len(read_history(os.path.join(out, run_folder(name)))["loss"])
            print(f"{name}: {epochs_run} epochs, held-out log p(x) {results[name]['log_likelihood']:.1f} nats "
                  f"per row ({time.perf_counter() - started:.0f} s)", flush=True)
        if verbose and name == CHOSEN:
            print(selection_summary(read_candidates(os.path.join(out, run_folder(name)))), flush=True)
        if name == "question":
            results["question, best fixed sigma"] = evaluate(
                models[name].with_fitted_stddev(x_train), x_test, num_samples=num_samples)
    export_path = export_saved_model(models[CHOSEN], os.path.join(out, "export"))
    with open(os.path.join(out, "results.json"), "w") as file:
        json.dump({"held_out_rows": len(x_test), "results": results, "export": export_path}, file, indent=2)
    print(f"\nHeld-out breast-cancer rows ({len(x_test)}), raw units, {num_samples} importance samples:\n")
    print(results_table(results))
    print(f"\nSavedModel for TensorFlow Serving: {export_path}")
    print("Runs, history and TensorBoard logs: " + ", ".join(f"{out}/{run_folder(name)}" for name in models))
    return results
