r"""Held-out evaluation in the raw data's units.

The log-likelihood is importance-sampled with the posterior as proposal (the
IWAE bound of Burda et al. 2016):

    log p(x) >= log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x),   z_s ~ q(z|x)

which tightens towards log p(x) as S grows; the mean of the same log-weights is
the ELBO. Rows and draws are processed in chunks, so memory stays bounded for
any S. Calibration asks whether the predicted stddev means what it says: the
share of cells within +-1 and +-2 sigma of the reconstruction (68% and 95% for a
calibrated Gaussian), and the histogram of the probability integral transform
Phi((x - mean) / stddev), flat when calibrated.

Fills are scored on cells whose values are known: `leave_one_out` hides each
observed cell in its own copy of its row, the model fills it from the rest of the
row, and `normalised_errors` are its errors in units of each column's standard
deviation.
"""

import math

import numpy as np
import tensorflow as tf

from tfp_vae import losses
from tfp_vae.config import LIKELIHOOD_SAMPLES
from tfp_vae.data import RunningMoments
from tfp_vae.errors import DataError, warn
from tfp_vae.model import DRAW_NUMBERS, IMPUTE_SAMPLES, VariationalAutoencoder, traced
from tfp_vae.pipeline import as_source, dropped_rows_message

ACTIVE_UNIT_VARIANCE = 0.01
PIT_BINS = 10


def log_likelihood(model: VariationalAutoencoder, x, num_samples: int = LIKELIHOOD_SAMPLES, seed: int = 0,
                   rows_per_chunk: int = 256, cells_per_chunk: int = DRAW_NUMBERS) -> dict:
    """Per-example IWAE log-likelihood, ELBO, reconstruction log-probability and KL(q(z|x) || p(z)), in nats.

    Draws are made `cells_per_chunk` decoder numbers at a time and summed as they
    come, so memory stays bounded for any number of samples; the bound itself is
    over all of them.
    """
    x = np.asarray(x, np.float32)
    num_samples = model.draws_for(num_samples)
    weight_terms = traced(model, "weight_terms")
    rng = np.random.default_rng(seed)
    width = max(model.chunk_width, model.code_size)
    results = {"log_likelihood": [], "elbo": [], "reconstruction_log_prob": [], "kl": []}
    for start in range(0, len(x), rows_per_chunk):
        rows = tf.constant(x[start:start + rows_per_chunk])
        samples_per_chunk = max(1, cells_per_chunk // (len(rows) * width))
        # Running sums over the draws: log sum exp of the weights, the weights, log p(x|z), log q(z|x) / p(z).
        log_total, weight_total, log_px_total, kl_total = np.full(len(rows), -np.inf), 0.0, 0.0, 0.0
        for first in range(0, num_samples, samples_per_chunk):
            count = min(samples_per_chunk, num_samples - first)
            eps = rng.standard_normal((count, len(rows), model.noise_size)).astype(np.float32)
            chunk_weights, chunk_log_px, chunk_log_ratio = weight_terms(rows, tf.constant(eps))
            chunk_weights = tf.cast(chunk_weights, tf.float64)
            with np.errstate(invalid="ignore"):  # a NaN weight makes the row's figure NaN, for the caller to report
                log_total = np.logaddexp(log_total, losses.iwae_bound(chunk_weights).numpy() + np.log(count))
            weight_total = weight_total + tf.reduce_sum(chunk_weights, axis=0).numpy()
            log_px_total = log_px_total + tf.reduce_sum(tf.cast(chunk_log_px, tf.float64), axis=0).numpy()
            kl_total = kl_total + tf.reduce_sum(tf.cast(chunk_log_ratio, tf.float64), axis=0).numpy()
        results["log_likelihood"].append(log_total - np.log(num_samples))
        results["elbo"].append(weight_total / num_samples)
        results["reconstruction_log_prob"].append(log_px_total / num_samples)
        results["kl"].append(kl_total / num_samples)
    return {name: np.concatenate(values) for name, values in results.items()}


def leave_one_out(rows: np.ndarray, max_cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of `rows` [N, D] with one observed cell hidden (NaN) in each, the copies as they were, and the
    index in `rows` each copy came from.

    Every observed cell of a row that keeps another observed cell is hidden once;
    beyond `max_cells` of them, a random subset (by `seed`), in row order.
    """
    observed = ~np.isnan(rows)
    row, column = np.nonzero(observed & (observed.sum(axis=1, keepdims=True) >= 2))
    if len(row) > max_cells:
        kept = np.sort(np.random.default_rng(seed).choice(len(row), max_cells, replace=False))
        row, column = row[kept], column[kept]
    truth = rows[row]
    gappy = truth.copy()
    gappy[np.arange(len(row)), column] = np.nan
    return gappy, truth, row


def normalised_errors(filled: np.ndarray, truth: np.ndarray, hidden: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The errors of `filled` at the `hidden` cells (in row-major order), each in units of its column's `scale`."""
    return ((filled - truth) / scale)[hidden]


def root_mean_square(errors: np.ndarray) -> float:
    """sqrt(mean(errors**2)): how fill errors are summed up in one figure."""
    return float(np.sqrt(np.mean(np.square(errors))))


def normalised_rmse(filled: np.ndarray, truth: np.ndarray, hidden: np.ndarray, scale: np.ndarray) -> float:
    """Root mean squared error of `filled` over the `hidden` cells, each column's in units of its `scale`."""
    return root_mean_square(normalised_errors(filled, truth, hidden, scale))


def fill_errors(model: VariationalAutoencoder, gappy: np.ndarray, truth: np.ndarray, scale: np.ndarray,
                num_samples: int = IMPUTE_SAMPLES, seed: int = 0) -> np.ndarray:
    """`normalised_errors` of the model's fills (`model.impute`, by default with the draws a user's fills take) of
    the cells missing in `gappy`, known in `truth`."""
    filled = model.impute(gappy, num_samples=num_samples, seed=seed)[0].astype(np.float64)
    return normalised_errors(filled, truth, np.isnan(gappy) & ~np.isnan(truth), scale)


def calibration_counts(x, mean, stddev) -> np.ndarray:
    """Cells within 1 and 2 sigma, then the PIT histogram's counts: [2 + PIT_BINS] numbers."""
    standardised = (np.asarray(x, np.float64) - mean) / stddev
    standardised = standardised[np.isfinite(standardised)]  # missing cells have no error
    pit = 0.5 * (1.0 + tf.math.erf(standardised / math.sqrt(2.0)).numpy())
    histogram, _ = np.histogram(pit, bins=PIT_BINS, range=(0.0, 1.0))
    return np.concatenate([[np.sum(np.abs(standardised) <= 1.0), np.sum(np.abs(standardised) <= 2.0)], histogram])


def evaluate(model: VariationalAutoencoder, data, num_samples: int = LIKELIHOOD_SAMPLES, seed: int = 0) -> dict:
    """Per-example means, in nats of the raw data, and the model's calibration.

    `data` is an array [rows, features] or a `pipeline.CsvSource`, read block by
    block. `log_likelihood` is the IWAE estimate with `num_samples` draws (one where
    the model is closed-form: `draws_for`) and
    `log_likelihood_stderr` its standard error over examples; `mse` and the
    calibration use the reconstruction at the posterior mean. For a model that
    allows missing cells (`allow_missing=True`), NaN cells are missing: the
    log-likelihood is log p(x_observed), the error and calibration are over observed cells.
    """
    allow_missing = getattr(model, "allow_missing", False)
    source = as_source(data, allow_missing)
    if source.width != model.input_size:
        raise DataError(f"{source.name}: expected {model.input_size} features per row, the data has {source.width}")
    sums = np.zeros(6)
    counts = np.zeros(2 + PIT_BINS)
    codes = RunningMoments()
    n = cells = dropped = 0
    for number, (values, _, dropped_here) in enumerate(source.blocks()):
        x = values.astype(np.float32)
        per_example = log_likelihood(model, x, num_samples, seed + number)
        outputs = {name: value.numpy().astype(np.float64) for name, value in model(x).items()}
        ll = per_example["log_likelihood"]
        sums += [ll.sum(), (ll**2).sum(), per_example["elbo"].sum(), per_example["reconstruction_log_prob"].sum(),
                 per_example["kl"].sum(),
                 np.nanmean((x.astype(np.float64) - outputs["mean"]) ** 2, axis=1).sum()]
        counts += calibration_counts(x, outputs["mean"], outputs["stddev"])
        codes.update(outputs["code_mean"].astype(np.float64))
        n += len(x)
        cells += int(np.isfinite(x).sum())
        dropped += dropped_here
    if n == 0:
        raise DataError("no rows to evaluate")
    if dropped:
        warn(f"{source.name}: {dropped_rows_message(dropped, allow_missing)}; "
             f"the figures are over the other {n}")
    ll_sum, ll_squares, elbo_sum, log_px_sum, kl_sum, mse_sum = sums
    log_likelihood_mean = ll_sum / n
    # A row scoring -inf (a value far past the training rows') leaves the mean -inf and its spread unbounded.
    variance = (max(ll_squares / n - log_likelihood_mean**2, 0.0) * n / max(n - 1, 1)
                if np.isfinite(log_likelihood_mean) else np.inf)
    return {
        "elbo": elbo_sum / n,
        "log_likelihood": log_likelihood_mean,
        "log_likelihood_stderr": math.sqrt(variance / n) if n > 1 else 0.0,
        "reconstruction_nll": -log_px_sum / n,
        "kl": kl_sum / n,
        "mse": mse_sum / n,
        "bits_per_feature": -log_likelihood_mean / (model.input_size * math.log(2.0)),
        "active_units": int(np.sum(codes.variance > ACTIVE_UNIT_VARIANCE)),
        "coverage_1sigma": counts[0] / cells,
        "coverage_2sigma": counts[1] / cells,
        "pit_histogram": (counts[2:] / cells).tolist(),
        "num_samples": model.draws_for(num_samples),
        "n": n,
    }
