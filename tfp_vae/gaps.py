r"""A Gaussian of which some coordinates are missing: what whitening and a full-covariance decoder need with gaps.

For N(mu, Sigma) over D features, and a row whose observed cells are o (mask 1)
and missing ones u (mask 0):

    log p(x_o)       = log N(x_o; mu_o, Sigma_oo)                       the marginal
    E[x_u | x_o]     = mu_u + Sigma_uo Sigma_oo^-1 (x_o - mu_o)          the conditional
    Var[x_u | x_o]   = diag(Sigma_uu - Sigma_uo Sigma_oo^-1 Sigma_ou)

Each row has its own o, so all three come from the padded covariance
P = (m m^T) * Sigma + diag(1 - m): Sigma_oo where both cells are observed, the
identity where either is missing. P^-1 is Sigma_oo^-1 padded the same way, so one
Cholesky factor per row serves every formula, in batched stock ops that export.
A draw of the missing cells given the observed ones is a draw x~ of the whole
row, moved by the conditional mean's formula (Matheron's rule):
x~_u + Sigma_uo Sigma_oo^-1 (x_o - x~_o).

`em_gaussian` fits mu and Sigma to rows with gaps by expectation-maximisation
(numpy, float64): the full-covariance Gaussian that the linear floor of the
model choice starts from. With gaps the maximum-likelihood Sigma overfits: the
pairs of columns seen together can be few, and the fitted Sigma_oo near
singular, so its conditional means swing with noise. EM can then find the
posterior mode under a prior worth k rows of the independent Gaussian (Schafer
1997's ridge prior): in each column's standardised units the M step is
Sigma = (C + k I) / (n + k), C the n rows' expected scatter. On n rows it moves
Sigma by k / (n + k), which helps where pairs of columns are rarely seen
together and hurts where a few columns are nearly collinear (iris), so k is not
fixed: the model choice offers the untrained Gaussian with k = 1 and k = 0 and
keeps the one whose validation fills are better (`Config.em_prior_rows`,
`tfp_vae.select`). The model choice whitens
several candidates on the same training rows, so the last few fits are kept,
by the rows' bytes, and each distinct table is fitted once.
"""

import collections
import hashlib
import math

import numpy as np
import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)
EM_ITERATIONS = 200
EM_TOLERANCE = 1e-6
EM_RIDGE = 1e-6  # added to the diagonal of standardised covariances, so constant or collinear columns stay invertible
EM_ROWS_PER_CHUNK = 1024
EM_FITS_KEPT = 4
_em_fits = collections.OrderedDict()


def padded_cholesky(covariance, mask):
    """The Cholesky factor of P = (m m^T) * Sigma + diag(1 - m), for covariances [..., D, D] and masks [..., D]."""
    both = mask[..., :, tf.newaxis] * mask[..., tf.newaxis, :]
    return tf.linalg.cholesky(covariance * both + tf.linalg.diag(1.0 - mask))


def in_float64(function):
    """`function` computed in float64, its results in its arguments' type.

    Its covariance Sigma = F F^T is formed there from the factor F a model gives:
    the product squares F's condition number, and a small noise scale beside
    large ones would drown in float32's rounding.
    """
    def wrapped(*tensors):
        dtype = tensors[0].dtype
        results = function(*(tf.cast(tensor, tf.float64) for tensor in tensors))
        return tf.nest.map_structure(lambda result: tf.cast(result, dtype), results)
    wrapped.__doc__ = function.__doc__
    return wrapped


@in_float64
def observed_log_prob(residual, factor, mask):
    """log N(r_o; 0, Sigma_oo) per row: residuals r = x - mu [..., D] (any number where missing), Sigma = F F^T."""
    tril = padded_cholesky(tf.matmul(factor, factor, transpose_b=True), mask)
    solved = tf.linalg.triangular_solve(tril, (residual * mask)[..., tf.newaxis])[..., 0]
    return (-0.5 * tf.reduce_sum(tf.square(solved), axis=-1)
            - tf.reduce_sum(tf.math.log(tf.linalg.diag_part(tril)), axis=-1)
            - 0.5 * LOG_2PI * tf.reduce_sum(mask, axis=-1))


@in_float64
def conditional(residual, factor, mask):
    """`(mean, variance)` of each cell's residual given the observed ones (r itself and 0 where observed)."""
    covariance = tf.matmul(factor, factor, transpose_b=True)
    tril = padded_cholesky(covariance, mask)
    cross = covariance * mask[..., tf.newaxis, :]  # Sigma[:, o]: each cell against the observed ones
    mean = tf.linalg.matvec(cross, tf.linalg.cholesky_solve(tril, (residual * mask)[..., tf.newaxis])[..., 0])
    solved = tf.linalg.triangular_solve(tril, tf.linalg.matrix_transpose(cross))
    variance = tf.linalg.diag_part(covariance) - tf.reduce_sum(tf.square(solved), axis=-2)
    return mean, tf.maximum(variance, 0.0)


def conditional_draw(residual, factor, mask, seed):
    """A draw of each row's residual given its observed cells (those cells as they are), from N(0, F F^T)."""
    draw = tf.linalg.matvec(factor, tf.random.stateless_normal(tf.shape(residual), seed=seed, dtype=residual.dtype))
    mean, _ = conditional(residual - draw, factor, mask)
    return draw + mean


def em_gaussian(rows, prior_rows: float) -> tuple[np.ndarray, np.ndarray]:
    """The mean [D] and covariance [D, D] of rows [N, D] with NaN gaps (EM, float64), under a prior of `prior_rows`.

    Runs in each column's standardised units, with `EM_RIDGE` on the diagonal,
    until no mean or covariance entry moves by more than `EM_TOLERANCE`, or
    `EM_ITERATIONS` steps (EM slows as gaps grow: with half the cells missing the
    benchmark's tables stop there, the last step moving entries by under 5e-4); the
    prior (module docstring) pulls the covariance toward the columns' own
    variances where the rows have gaps, and `prior_rows=0` gives the maximum-
    likelihood fit. On complete rows it is the rows' mean and population
    covariance, whatever the prior.
    """
    rows = np.ascontiguousarray(rows, np.float64)
    prior_rows = prior_rows if np.isnan(rows).any() else 0.0
    key = (rows.shape, prior_rows, hashlib.blake2b(rows.tobytes(), digest_size=16).digest())
    if key not in _em_fits:
        _em_fits[key] = _em_fit(rows, prior_rows)
        if len(_em_fits) > EM_FITS_KEPT:
            _em_fits.popitem(last=False)
    _em_fits.move_to_end(key)
    return tuple(array.copy() for array in _em_fits[key])


def _em_fit(rows, prior_rows):
    centre, spread = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
    prior = prior_rows * np.diag((spread > 0).astype(np.float64))  # a constant column keeps no variance
    spread = np.where(spread > 0, spread, 1.0)
    x = (rows - centre) / spread
    mask = ~np.isnan(x)
    x = np.where(mask, x, 0.0)
    mean, covariance = np.zeros(x.shape[1]), np.eye(x.shape[1])
    for _ in range(EM_ITERATIONS):
        filled, conditional_covariance = _expectation(x, mask, mean, covariance + EM_RIDGE * np.eye(len(mean)))
        new_mean = filled.mean(axis=0)
        centred = filled - new_mean
        new_covariance = (centred.T @ centred + conditional_covariance + prior) / (len(x) + prior_rows)
        moved = max(np.abs(new_mean - mean).max(), np.abs(new_covariance - covariance).max())
        mean, covariance = new_mean, new_covariance
        if moved < EM_TOLERANCE:
            break
    return centre + spread * mean, covariance * np.outer(spread, spread)


def _expectation(x, mask, mean, covariance):
    """Rows with their gaps at E[x_u | x_o], and the sum over rows of Cov[x_u | x_o] (zero outside u x u).

    From the precision L = Sigma^-1: E[x_u | x_o] = mu_u - L_uu^-1 L_uo (x_o - mu_o) and Cov[x_u | x_o] =
    L_uu^-1, so each row inverts a block as wide as its missing cells, not its observed ones: a fit 4.9x
    faster than by S_oo with a fifth of 61 columns missing, 1.8x with half (`benchmarks/gaps_speed.py`).
    """
    precision = np.linalg.inv(covariance)
    filled, total = np.where(mask, x, 0.0), np.zeros_like(covariance)
    pulled = np.where(mask, x - mean, 0.0) @ precision  # L_uo (x_o - mu_o), read in the missing cells
    counts = (~mask).sum(axis=1)
    for start in range(0, len(x), EM_ROWS_PER_CHUNK):
        rows = slice(start, start + EM_ROWS_PER_CHUNK)
        width = counts[rows].max(initial=0)
        if width == 0:
            continue
        missing = np.argsort(mask[rows], axis=1, kind="stable")[:, :width]  # each row's missing cells first
        valid = np.arange(width) < counts[rows, None]
        both = valid[:, :, None] & valid[:, None, :]
        block = np.where(both, precision[missing[:, :, None], missing[:, None, :]], np.eye(width))
        conditional = np.linalg.inv(block) * both
        shift = np.einsum("nij,nj->ni", conditional, np.take_along_axis(pulled[rows], missing, axis=1))
        index = np.arange(start, start + len(missing))[:, None]
        filled[index, missing] = np.where(valid, mean[missing] - shift, filled[index, missing])
        cells = (missing[:, :, None] * len(mean) + missing[:, None, :]).ravel()
        total += np.bincount(cells, conditional.ravel(), minlength=total.size).reshape(total.shape)
    return filled, total
