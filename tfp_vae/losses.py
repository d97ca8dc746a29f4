r"""The loss terms of a VAE for real-valued data, as small pure functions.

For data `x` in `D` features, a code `z` in `K` dimensions, an encoder
`q(z|x) = N(m, L L^T)` and a decoder `p(x|z) = N(mu(z), diag(sigma(z)^2))`:

    distortion = -log p(x|z)
               = sum_d [ 0.5 log(2 pi sigma_d^2) + (x_d - mu_d)^2 / (2 sigma_d^2) ]
                 (a full-covariance decoder N(mu(z), S(z) S(z)^T):
                  0.5 |S^-1 (x - mu)|^2 + sum_d log S_dd + 0.5 D log(2 pi))
    rate       = KL(q(z|x) || N(0, I))
               = 0.5 [ tr(L L^T) + m^T m - K - log det(L L^T) ]
    elbo       = -distortion - rate           (a lower bound on log p(x))
    loss       = distortion + beta * rate     (= -elbo when beta = 1)

The question this project answers trained with

    question_loss = mean_d (x_d - mu_d)^2 + kl_weight * rate,

which is `(2 sigma^2 / D)` times a Gaussian negative ELBO whose decoder has one
fixed `sigma = sqrt(kl_weight * D / 2)`, up to an additive constant: the weight
picks the noise level. `implied_sigma` returns it.

Every function maps a batch to one value per example, so callers choose the
reduction.
"""

import math

import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)


def observed_sum(per_feature: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    """The sum over the last axis of the observed cells (`mask` 1) only; all of them when `mask` is None."""
    return tf.reduce_sum(per_feature if mask is None else per_feature * mask, axis=-1)


def gaussian_log_prob(x: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """log N(x; loc, diag(scale^2)) over the last axis (over its observed cells: the marginal, given `mask`)."""
    z = (x - loc) / scale
    return -observed_sum(0.5 * LOG_2PI + tf.math.log(scale) + 0.5 * tf.square(z), mask)


def beta_nll_log_prob(x: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor, beta: float,
                      mask: tf.Tensor | None = None) -> tf.Tensor:
    """beta-NLL's training objective (Seitzer et al. 2022) as a log-probability, over the last axis.

    Each feature's Gaussian log-density weighted by `stop_gradient(scale^(2 beta))`:
    beta = 0 is the log-likelihood, beta = 1 moves the mean as squared error would,
    so features the decoder finds noisy still get their means fitted. A training
    objective, not a log-density.
    """
    z = (x - loc) / scale
    per_feature = -(0.5 * LOG_2PI + tf.math.log(scale) + 0.5 * tf.square(z))
    return observed_sum(tf.stop_gradient(scale ** (2.0 * beta)) * per_feature, mask)


def gaussian_log_prob_tril(x: tf.Tensor, loc: tf.Tensor, scale_tril: tf.Tensor, mask: None = None) -> tf.Tensor:
    """log N(x; loc, S S^T) over the last axis for a lower-triangular S [..., D, D] with positive diagonal.

    -0.5 |S^-1 (x - loc)|^2 - sum log diag(S) - 0.5 D log(2 pi), one triangular solve. Complete rows
    only (`mask` None): a row's marginal would need a factorisation of its own.
    """
    if mask is not None:
        raise ValueError("a full-covariance decoder scores complete rows only")
    scale = tf.linalg.LinearOperatorLowerTriangular(scale_tril, is_non_singular=True)
    z = scale.solvevec(x - loc)
    return -scale.log_abs_determinant() - tf.reduce_sum(0.5 * LOG_2PI + 0.5 * tf.square(z), axis=-1)


def student_t_log_prob(x: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor, df: tf.Tensor,
                       mask: tf.Tensor | None = None) -> tf.Tensor:
    """log prod_d t_df(x_d; loc_d, scale_d) over the last axis: Student-t with `df` degrees of freedom.

    lgamma((df + 1) / 2) - lgamma(df / 2) - 0.5 log(df pi) - log scale - (df + 1) / 2 log(1 + z^2 / df),
    z = (x - loc) / scale, per feature.
    """
    z = (x - loc) / scale
    per_feature = (tf.math.lgamma(0.5 * (df + 1.0)) - tf.math.lgamma(0.5 * df) - 0.5 * tf.math.log(df * math.pi)
                   - tf.math.log(scale) - 0.5 * (df + 1.0) * tf.math.log1p(tf.square(z) / df))
    return observed_sum(per_feature, mask)


def standard_normal_log_prob(z: tf.Tensor) -> tf.Tensor:
    """log N(z; 0, I) over the last axis."""
    return -0.5 * tf.reduce_sum(tf.square(z) + LOG_2PI, axis=-1)


def rate_diagonal(loc: tf.Tensor, log_scale: tf.Tensor) -> tf.Tensor:
    """KL(N(loc, diag(s^2)) || N(0, I)) = 0.5 sum(m^2 + s^2 - log s^2 - 1), from log s.

    Taking log s keeps the KL finite where s itself underflows to zero.
    """
    return 0.5 * tf.reduce_sum(
        tf.square(loc) + tf.exp(2.0 * log_scale) - 2.0 * log_scale - 1.0, axis=-1)


def log_softplus(x: tf.Tensor) -> tf.Tensor:
    """log(softplus(x)), equal to x where softplus(x) underflows, with finite gradients."""
    underflows = x < -20.0
    safe = tf.where(underflows, tf.zeros_like(x), x)
    return tf.where(underflows, x, tf.math.log(tf.math.softplus(safe)))


def rate_full(loc: tf.Tensor, scale_tril: tf.Tensor) -> tf.Tensor:
    """KL(N(loc, L L^T) || N(0, I)) for a lower-triangular L with positive diagonal."""
    trace = tf.reduce_sum(tf.square(scale_tril), axis=[-2, -1])
    log_det = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(scale_tril)), axis=-1)
    code_size = tf.cast(tf.shape(loc)[-1], loc.dtype)
    return 0.5 * (trace + tf.reduce_sum(tf.square(loc), axis=-1) - code_size - log_det)


def elbo(distortion_value: tf.Tensor, rate_value: tf.Tensor) -> tf.Tensor:
    """The evidence lower bound, -distortion - rate."""
    return -distortion_value - rate_value


def beta_loss(distortion_value: tf.Tensor, rate_value: tf.Tensor, beta) -> tf.Tensor:
    """distortion + beta * rate: the negative ELBO when beta is 1."""
    return distortion_value + beta * rate_value


def question_loss(x: tf.Tensor, reconstruction: tf.Tensor, rate_value: tf.Tensor, kl_weight) -> tf.Tensor:
    """The question's loss: mean((x - reconstruction)**2, axis=1) + kl_weight * KL."""
    return tf.reduce_mean(tf.square(x - reconstruction), axis=-1) + kl_weight * rate_value


def implied_sigma(kl_weight: float, input_size: int) -> float:
    """The fixed decoder sigma for which the question's loss is a scaled negative ELBO.

    MSE_mean + w KL = (2 sigma^2 / D) * [sum (x - mu)^2 / (2 sigma^2) + KL] when
    sigma^2 = w D / 2.
    """
    return math.sqrt(kl_weight * input_size / 2.0)


def optimal_scale(mean_squared_error: tf.Tensor, min_scale: float) -> tf.Tensor:
    """The sigma-VAE scale: per feature, the root of the batch's mean squared error.

    It maximises the batch's Gaussian likelihood for the given means (Rybkin et
    al. 2021), floored at `min_scale` so a perfect fit cannot send it to zero.
    At that maximum the loss's derivative in sigma is zero, so gradients need
    not flow through it.
    """
    return tf.maximum(tf.sqrt(mean_squared_error), min_scale)


def iwae_bound(log_weights: tf.Tensor) -> tf.Tensor:
    """log (1/S) sum_s exp(log_weights[s]): the importance-weighted bound over axis 0.

    With log_weights = log p(x|z_s) + log p(z_s) - log q(z_s|x) for S draws of
    q(z|x), it is a lower bound on log p(x) that tightens as S grows (Burda et al.
    2016); their mean is the ELBO.
    """
    num_samples = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(num_samples)
