"""Two ideas for better fills, probed before either is built into tfp_vae.

    python benchmarks/fill_ideas.py [--seeds 3] [--missing 0.2] [--sets digits,wine,breast cancer]
                                    [--out benchmarks/results/fill_ideas.md]

`imputation.py` leaves tfp_vae behind the extra-trees imputer on digits and wine. Two changes could
close the gap, and each is costly to build (new weights and exports, or the training rows inside the
SavedModel), so each is first measured here on a small hand-written MIWAE (Mattei and Frellsen 2019):

- **an encoder that sees the mask.** MIWAE's encoder reads the row with its gaps set to zero (the
  column's centre, in standardised units), so it cannot tell a gap from an observed centre value.
  The variant reads [row with zeros, mask] (as the partial VAEs of Ma et al. 2019 do);
- **nearest neighbours as a blend member.** `KNNImputer`'s fills err where a global model does not
  (a table whose rows come in near-copies, as digits' strokes do), so a blend of them with the VAE's
  could beat both. tfp_vae already blends a network's fills with a linear Gaussian's; the probe asks
  what nearest neighbours add to MIWAE alone, and to MIWAE blended with the Gaussian fitted by EM.

The rows are `imputation.py`'s training rows (the same `SPLIT_SEED`; its held-out rows never reach
this script). The probe hides its own cells at random and sets nothing in tfp_vae: it only says whether
an idea is worth building, and a model that had it would still be chosen by its validation figures.
The rows are split 80/20 into fitting and validation rows, and the validation rows in two halves: the
first picks the epoch (every `CHECK_EVERY`) and the blends' weights (`tfp_vae.select.simplex_weights`),
the second scores the fills, in each column's standard deviation (lower is better).

The model: an encoder and a decoder of two tanh layers each (`HIDDEN` units), a diagonal Gaussian
posterior over `CODE_SIZE` dimensions, a Gaussian decoder whose scale has a floor (`MIN_SCALE`,
standardised units: digits' pixels that are almost always blank let a free scale collapse), trained
on the importance-weighted bound over observed cells (`IMPORTANCE_SAMPLES`) with Adam, and filling by
self-normalised importance sampling (`FILL_SAMPLES` draws).
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from sklearn.impute import KNNImputer
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quality import SPLIT_SEED, data_sets  # noqa: E402
from imputation import conditional  # noqa: E402
from report import write_report  # noqa: E402
from tfp_vae._keras import tf_keras  # noqa: E402
from tfp_vae.gaps import em_gaussian  # noqa: E402
from tfp_vae.select import simplex_weights  # noqa: E402

tfd = tfp.distributions
CODE_SIZE, IMPORTANCE_SAMPLES, FILL_SAMPLES, MIN_SCALE = 8, 8, 1000, 0.05
BATCH, LEARNING_RATE, CHECK_EVERY = 64, 1e-3, 50
HIDDEN = {"digits": 128, "wine": 32, "breast cancer": 64}
EPOCHS = {"digits": 700, "wine": 600, "breast cancer": 600}
MIWAE, MASK, KNN, EM = "MIWAE", "MIWAE, its encoder seeing the mask", "KNNImputer", "Gaussian, EM"
BLENDS = (f"{MIWAE} + {KNN}", f"{MIWAE} + {EM}", f"{MIWAE} + {EM} + {KNN}")
COMPARISONS = ((MASK, MIWAE), (BLENDS[0], MIWAE), (BLENDS[2], BLENDS[1]))


def mlp(inputs: int, outputs: int, hidden: int):
    return tf_keras.Sequential([tf_keras.layers.Dense(hidden, "tanh", input_shape=(inputs,)),
                                tf_keras.layers.Dense(hidden, "tanh"), tf_keras.layers.Dense(outputs)])


class Miwae:
    """MIWAE over standardised rows with zeros in the gaps; `sees_mask`: the encoder also reads the mask."""

    def __init__(self, width: int, hidden: int, sees_mask: bool, seed: int):
        tf_keras.utils.set_random_seed(seed)
        self.sees_mask = sees_mask
        self.encoder = mlp(2 * width if sees_mask else width, 2 * CODE_SIZE, hidden)
        self.decoder = mlp(CODE_SIZE, 2 * width, hidden)
        self.optimizer = tf_keras.optimizers.Adam(LEARNING_RATE)
        self.train_step = tf.function(self._train_step)
        self.fill = tf.function(self._fill)

    def log_weights(self, x, mask, samples: int):
        """log p(x_obs, z) - log q(z | x) for `samples` draws of z per row, and p(x | z)."""
        encoded = self.encoder(tf.concat([x, mask], 1) if self.sees_mask else x)
        qz = tfd.Normal(encoded[:, :CODE_SIZE], tf.nn.softplus(encoded[:, CODE_SIZE:]) + 1e-4)
        z = qz.sample(samples)
        decoded = tf.reshape(self.decoder(tf.reshape(z, [-1, CODE_SIZE])), [samples, -1, 2 * x.shape[1]])
        loc, scale = tf.split(decoded, 2, axis=-1)
        px = tfd.Normal(loc, tf.nn.softplus(scale) + MIN_SCALE)
        log_px = tf.reduce_sum(px.log_prob(x) * mask, -1)
        return log_px + tf.reduce_sum(tfd.Normal(0.0, 1.0).log_prob(z) - qz.log_prob(z), -1), px

    def _train_step(self, x, mask):
        with tf.GradientTape() as tape:
            log_weights, _ = self.log_weights(x, mask, IMPORTANCE_SAMPLES)
            loss = -tf.reduce_mean(tf.reduce_logsumexp(log_weights, 0) - np.log(IMPORTANCE_SAMPLES))
        variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    def _fill(self, x, mask):
        log_weights, px = self.log_weights(x, mask, FILL_SAMPLES)
        return tf.reduce_sum(tf.nn.softmax(log_weights, 0)[..., tf.newaxis] * px.mean(), 0)


def rmse(fill, truth, gaps) -> float:
    return float(np.sqrt(np.mean((fill - truth)[gaps] ** 2)))


def trained_fill(model, fit, validation, epochs: int, choose, seed: int):
    """The validation rows filled at the epoch whose fills of the `choose` rows' gaps err least."""
    rows, mask = np.nan_to_num(fit).astype(np.float32), (~np.isnan(fit)).astype(np.float32)
    inputs = np.nan_to_num(validation).astype(np.float32), (~np.isnan(validation)).astype(np.float32)
    rng, best = np.random.default_rng(seed), (np.inf, None)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), BATCH):
            model.train_step(rows[order[start:start + BATCH]], mask[order[start:start + BATCH]])
        if epoch % CHECK_EVERY == 0:
            fill = model.fill(*inputs).numpy()
            best = min(best, (choose(fill), epoch, fill), key=lambda found: found[0])
    return best[2], best[1]


def vae_fill(name, fit, validation, sees_mask, choose, seed):
    return trained_fill(Miwae(fit.shape[1], HIDDEN[name], sees_mask, seed), fit, validation, EPOCHS[name],
                        choose, seed)


def blend_fills(fills: dict, members: list, truth, choose):
    """The members' fills weighted to err least on the `choose` cells, and the weights."""
    weights = simplex_weights(np.stack([(fills[member] - truth)[choose] for member in members], axis=1))
    return sum(weight * fills[member] for weight, member in zip(weights, members)), weights


def scored(fills: dict, blends, truth, choose, score, result: dict) -> dict:
    """Each fill's RMSE over the `score` cells, `blends` ("a + b") included, and `result` with the blends' weights."""
    for blend in blends:
        fills[blend], weights = blend_fills(fills, blend.split(" + "), truth, choose)
        result[blend + ": weights"] = " / ".join(f"{weight:.2f}" for weight in weights)
    return {**{label: rmse(fill, truth, score) for label, fill in fills.items()}, **result}


def probe_rows(x, seed: int, missing: float):
    """`imputation.py`'s training rows with cells hidden, split into fitting rows and validation rows.

    Returns the standardised fitting rows, the standardised validation rows with their gaps, the truth
    and the unit (each column's standard deviation, in standardised units) that fills are divided by,
    and the masks of the validation gaps that choose (epochs, weights) and that score."""
    x_train = train_test_split(np.asarray(x, np.float64), test_size=0.25, random_state=SPLIT_SEED)[0]
    rng = np.random.default_rng(seed)
    gappy = np.where(rng.random(x_train.shape) < missing, np.nan, x_train)
    order = rng.permutation(len(x_train))
    fit_rows, validation_rows = order[:int(0.8 * len(order))], order[int(0.8 * len(order)):]
    centre, scale = np.nanmean(gappy[fit_rows], 0), np.nanstd(gappy[fit_rows], 0)
    scale[scale == 0] = 1.0
    standardised, truth = (gappy - centre) / scale, (x_train - centre) / scale
    unit = x_train.std(0) / scale
    validation = standardised[validation_rows]
    gaps = np.isnan(validation)
    choose_rows = np.arange(len(validation)) < len(validation) // 2
    return (standardised[fit_rows], validation, truth[validation_rows] / unit, unit,
            gaps & choose_rows[:, None], gaps & ~choose_rows[:, None])


def classical_fills(fit, validation, unit) -> dict:
    """The validation rows' gaps filled by `KNNImputer` and by EM's Gaussian, both fitted on `fit`."""
    mean, covariance = em_gaussian(fit, prior_rows=0.0)
    return {KNN: KNNImputer().fit(fit).transform(validation) / unit,
            EM: conditional(validation, mean, covariance)[0] / unit}


def probe(name, x, seed, missing):
    fit, validation, truth, unit, choose, score = probe_rows(x, seed, missing)
    fills, result = classical_fills(fit, validation, unit), {}
    for sees_mask in (False, True):
        label = MASK if sees_mask else MIWAE
        fill, result[label + ": epoch"] = vae_fill(name, fit, validation, sees_mask,
                                                   lambda fill: rmse(fill / unit, truth, choose), seed)
        fills[label] = fill / unit
    return scored(fills, BLENDS, truth, choose, score, result)


def probe_report(probe, comparisons, title: str, script: str, argv=None):
    """Runs `probe` per set and seed, and writes its figures as a table per set with `comparisons`' changes."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--missing", type=float, default=0.2)
    parser.add_argument("--sets", default="digits,wine,breast cancer")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      os.path.basename(script).replace(".py", ".md")))
    args = parser.parse_args(argv)
    started, sets, sections = time.time(), data_sets(), []
    for name in args.sets.split(","):
        results = [probe(name, sets[name][0], seed, args.missing) for seed in range(args.seeds)]
        lines = [f"## {name}", "", "| | " + " | ".join(f"seed {seed}" for seed in range(args.seeds)) + " | mean |",
                 "|---" * (args.seeds + 2) + "|"]
        for key in results[0]:
            values = [result[key] for result in results]
            if isinstance(values[0], str):
                lines.append(f"| {key} | " + " | ".join(values) + " | |")
            else:
                form = "{:.0f}" if key.endswith(("epoch", "seconds")) else "{:.3f}"
                lines.append(f"| {key} | " + " | ".join(map(form.format, values))
                             + f" | {form.format(np.mean(values))} |")
        for idea, without in comparisons if args.seeds > 1 else ():
            change = np.array([result[idea] - result[without] for result in results])
            lines.append(f"\n{idea} minus {without}: {change.mean():+.3f} +- "
                         f"{change.std(ddof=1) / np.sqrt(len(change)):.3f} (the mean over seeds +- its standard error)")
        sections.append("\n".join(lines))
        print(sections[-1], file=sys.stderr, flush=True)
    header = (f"# {title}\n\n"
              f"`python benchmarks/{os.path.basename(script)} --seeds {args.seeds} --missing {args.missing} --sets "
              f"'{args.sets}'`: {os.cpu_count()} CPU cores, Python {platform.python_version()}, TensorFlow "
              f"{tf.__version__}, {(time.time() - started) / 60:.0f} minutes. RMSE of the fills of the scored "
              "validation cells, in column standard deviations (lower is better); the epochs and the blends' "
              "weights (non-negative, summing to one, as tfp_vae's blend) were chosen on the other validation rows.")
    write_report(["\n\n".join([header, *sections])], args.out)


if __name__ == "__main__":
    probe_report(probe, COMPARISONS, "Fill ideas: an encoder that sees the mask, nearest neighbours as a blend member",
                 __file__)
