"""A third idea for better fills, probed before it is built: a network trained to fill cells it hides.

    python benchmarks/fill_regression.py [--seeds 3] [--missing 0.2] [--sets digits,wine,breast cancer]
                                         [--out benchmarks/results/fill_regression.md]

The extra-trees imputer beats tfp_vae on digits and fills within 0.002 of it on wine. It regresses each
column on the others, the squared error of the fills being what it minimises; tfp_vae's members are
densities, whose fills are conditional means only as far as the density is right. The idea: a
discriminative member beside them, one network that reads a row with its gaps set to zero and its mask
(as the denoising imputers MIDA, Gondara and Wang 2018, and the partial VAE's encoder do) and is trained to
fill cells it hid itself: each step hides observed cells at the rate the data's own gaps have, and the
loss is the squared error over the hidden cells only. It gives fills, not a density, so in tfp_vae it
could join the blend as the nearest rows did, never be chosen as the model.

Measured here as `fill_ideas.py` measures (same rows, splits, MIWAE, EM and nearest neighbours; epochs
and weights from half the validation rows, scores on the other half): the network alone, and what it adds
to the blend tfp_vae now has (a VAE, EM's Gaussian, the nearest rows). `imputation.py`'s extra-trees
imputer (same settings, fitted on the fitting rows) fills the same cells, to say how far that blend
trails it here, where a probe costs minutes rather than the hour `imputation.py` takes on digits.
"""

import importlib
import os
import sys
import time

import numpy as np
import tensorflow as tf
from sklearn.ensemble import ExtraTreesRegressor

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fill_ideas import (EM, EPOCHS, HIDDEN, KNN, LEARNING_RATE, MIWAE, classical_fills, mlp,  # noqa: E402
                        probe_report, probe_rows, rmse, scored, trained_fill, vae_fill)
from tfp_vae._keras import tf_keras  # noqa: E402

importlib.import_module("sklearn.experimental.enable_iterative_imputer")  # IterativeImputer is experimental
from sklearn.impute import IterativeImputer  # noqa: E402

NET, TREES = "network filling cells it hid", "IterativeImputer with extra trees (the imputer to beat)"
BLENDS = (f"{MIWAE} + {EM} + {KNN}", f"{MIWAE} + {EM} + {KNN} + {NET}", f"{EM} + {KNN} + {NET}")
COMPARISONS = ((NET, MIWAE), (BLENDS[1], BLENDS[0]), (BLENDS[0], TREES))


class MaskedRegression:
    """A network from [row with zeros in the gaps, mask] to the row, trained on observed cells it hides."""

    def __init__(self, width: int, hidden: int, hide: float, seed: int):
        tf_keras.utils.set_random_seed(seed)
        self.hide = hide
        self.network = mlp(2 * width, width, hidden)
        self.optimizer = tf_keras.optimizers.Adam(LEARNING_RATE)
        self.train_step = tf.function(self._train_step)
        self.fill = tf.function(self._fill)

    def _train_step(self, x, mask):
        hidden = tf.cast(tf.random.uniform(tf.shape(mask)) < self.hide, tf.float32) * mask
        keep = mask - hidden
        with tf.GradientTape() as tape:
            error = self.network(tf.concat([x * keep, keep], 1)) - x
            loss = tf.reduce_sum(hidden * error ** 2) / tf.maximum(tf.reduce_sum(hidden), 1.0)
        variables = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    def _fill(self, x, mask):
        return self.network(tf.concat([x * mask, mask], 1))


def probe(name, x, seed, missing):
    fit, validation, truth, unit, choose, score = probe_rows(x, seed, missing)
    started = time.time()
    trees = IterativeImputer(ExtraTreesRegressor(n_estimators=50, random_state=seed, n_jobs=1), max_iter=10,
                             random_state=seed).fit(fit)
    fills = {TREES: trees.transform(validation) / unit}
    result = {TREES + ": seconds": time.time() - started}
    fills.update(classical_fills(fit, validation, unit))
    chooser = lambda fill: rmse(fill / unit, truth, choose)  # noqa: E731
    fill, result[MIWAE + ": epoch"] = vae_fill(name, fit, validation, False, chooser, seed)
    fills[MIWAE] = fill / unit
    network = MaskedRegression(fit.shape[1], HIDDEN[name], float(np.isnan(fit).mean()), seed)
    fill, result[NET + ": epoch"] = trained_fill(network, fit, validation, EPOCHS[name], chooser, seed)
    fills[NET] = fill / unit
    return scored(fills, BLENDS, truth, choose, score, result)


if __name__ == "__main__":
    probe_report(probe, COMPARISONS, "Fill ideas: a network that fills cells it hid", __file__)
