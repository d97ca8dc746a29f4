"""Each loss term against its closed form, computed by hand in numpy."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import losses


def test_gaussian_log_prob_is_the_closed_form(rng):
    x, mu = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    sigma = rng.uniform(0.1, 3.0, size=(4, 3))
    expected = np.sum(-0.5 * np.log(2 * np.pi * sigma**2) - (x - mu) ** 2 / (2 * sigma**2), axis=1)
    np.testing.assert_allclose(losses.gaussian_log_prob(x, mu, sigma).numpy(), expected, rtol=1e-10)


def test_gaussian_log_prob_with_a_lower_triangular_scale_is_the_full_covariance_density(rng):
    x, mu = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    tril = np.tril(rng.normal(size=(4, 3, 3)), -1) + np.eye(3) * rng.uniform(0.2, 2.0, size=(4, 1, 3))
    expected = []
    for row, mean, factor in zip(x, mu, tril):
        covariance = factor @ factor.T
        centred = row - mean
        expected.append(-0.5 * (3 * np.log(2 * np.pi) + np.log(np.linalg.det(covariance))
                                + centred @ np.linalg.inv(covariance) @ centred))
    np.testing.assert_allclose(losses.gaussian_log_prob_tril(x, mu, tril).numpy(), expected, rtol=1e-10)
    diagonal = rng.uniform(0.1, 3.0, size=(4, 3))
    np.testing.assert_allclose(
        losses.gaussian_log_prob_tril(x, mu, np.apply_along_axis(np.diag, 1, diagonal)),
        losses.gaussian_log_prob(x, mu, diagonal), rtol=1e-10)


def test_rate_diagonal_is_the_questions_formula(rng):
    m, s = rng.normal(size=(5, 2)), rng.uniform(0.05, 2.0, size=(5, 2))
    expected = 0.5 * np.sum(m**2 + s**2 - np.log(s**2) - 1, axis=1)
    np.testing.assert_allclose(losses.rate_diagonal(m, np.log(s)).numpy(), expected, rtol=1e-10)


def test_rate_full_is_the_closed_form(rng):
    k = 3
    m = rng.normal(size=(4, k))
    tril = np.tril(rng.normal(size=(4, k, k)))
    tril[:, np.arange(k), np.arange(k)] = rng.uniform(0.2, 2.0, size=(4, k))
    expected = []
    for loc, scale in zip(m, tril):
        cov = scale @ scale.T
        expected.append(0.5 * (np.trace(cov) + loc @ loc - k - np.log(np.linalg.det(cov))))
    np.testing.assert_allclose(losses.rate_full(m, tril).numpy(), expected, rtol=1e-8)


def test_rate_full_of_a_diagonal_equals_rate_diagonal(rng):
    m, s = rng.normal(size=(5, 3)), rng.uniform(0.1, 2.0, size=(5, 3))
    diagonal = np.stack([np.diag(row) for row in s])
    np.testing.assert_allclose(losses.rate_full(m, diagonal).numpy(),
                               losses.rate_diagonal(m, np.log(s)).numpy(), rtol=1e-10)


def test_log_softplus_stays_finite_where_softplus_underflows():
    x = tf.constant([-500.0, -30.0, 0.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = losses.log_softplus(x)
    gradient = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(y.numpy(), [-500.0, -30.0, math.log(math.log(2.0)), math.log(math.log1p(math.exp(3.0)))],
                               rtol=1e-5)
    assert np.all(np.isfinite(gradient))


def test_elbo_and_beta_loss():
    assert losses.elbo(2.0, 0.5) == -2.5
    assert losses.beta_loss(2.0, 0.5, 0.1) == pytest.approx(2.05)


def test_question_loss_is_mse_plus_weighted_kl(rng):
    x, recon, kl = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.uniform(size=4)
    expected = np.mean((x - recon) ** 2, axis=1) + 1e-4 * kl
    np.testing.assert_allclose(losses.question_loss(x, recon, kl, 1e-4).numpy(), expected, rtol=1e-10)


def test_implied_sigma_turns_the_question_loss_into_a_scaled_negative_elbo(rng):
    d, w = 6, 1e-3
    sigma = losses.implied_sigma(w, d)
    x, recon, kl = rng.normal(size=(4, d)), rng.normal(size=(4, d)), rng.uniform(size=4)
    question = losses.question_loss(x, recon, kl, w).numpy()
    negative_elbo = -losses.gaussian_log_prob(x, recon, np.full((4, d), sigma)).numpy() + kl
    constant = d * 0.5 * np.log(2 * np.pi * sigma**2)
    np.testing.assert_allclose(question * d / (2 * sigma**2), negative_elbo - constant, rtol=1e-8)


def test_optimal_scale_is_the_root_mean_squared_error_floored():
    np.testing.assert_allclose(losses.optimal_scale(np.array([10.0, 0.0]), 1e-3).numpy(), [np.sqrt(10.0), 1e-3])


def test_iwae_bound_is_the_log_mean_exp(rng):
    log_weights = rng.normal(size=(7, 3)) * 5
    expected = np.log(np.mean(np.exp(log_weights), axis=0))
    np.testing.assert_allclose(losses.iwae_bound(log_weights).numpy(), expected, rtol=1e-10)


def test_standard_normal_log_prob_is_the_closed_form(rng):
    z = rng.normal(size=(5, 4)) * 3
    expected = np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * z**2, axis=1)
    np.testing.assert_allclose(losses.standard_normal_log_prob(z).numpy(), expected, rtol=1e-10)


def test_student_t_log_prob_is_the_closed_form(rng):
    from scipy import stats
    x, loc = rng.normal(size=(4, 3)) * 3, rng.normal(size=(4, 3))
    scale, df = rng.uniform(0.2, 2.0, size=(4, 3)), rng.uniform(2.1, 40.0, size=(4, 3))
    expected = stats.t(df, loc, scale).logpdf(x).sum(axis=1)
    np.testing.assert_allclose(losses.student_t_log_prob(x, loc, scale, df).numpy(), expected, rtol=1e-10)


def test_beta_nll_weighs_each_feature_by_its_variance_to_the_beta():
    x, loc, scale = np.array([[1.0, -2.0]]), np.array([[0.5, 0.0]]), np.array([[2.0, 0.5]])
    per_feature = -(0.5 * np.log(2 * np.pi) + np.log(scale) + 0.5 * ((x - loc) / scale) ** 2)
    for beta in (0.0, 0.5, 1.0):
        expected = (scale ** (2 * beta) * per_feature).sum(axis=-1)
        np.testing.assert_allclose(losses.beta_nll_log_prob(x, loc, scale, beta).numpy(), expected, rtol=1e-12)
    loc_variable = tf.Variable(loc)
    with tf.GradientTape() as tape:  # beta = 1: the mean's gradient is squared error's, whatever sigma
        value = losses.beta_nll_log_prob(x, loc_variable, scale, 1.0)
    np.testing.assert_allclose(tape.gradient(value, loc_variable).numpy(), x - loc, rtol=1e-12)
