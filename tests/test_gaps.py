"""The Gaussian maths with gaps, against the textbook formulas on each row's own sub-blocks (numpy)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import multivariate_normal

from tfp_vae import gaps


@pytest.fixture
def gaussian(rng):
    factor = rng.normal(size=(5, 5))
    return rng.normal(size=5), factor @ factor.T + 0.5 * np.eye(5)


@pytest.fixture
def masks(rng):
    masks = (rng.random((40, 5)) < 0.6).astype(np.float64)
    masks[0] = 1.0  # a complete row
    masks[1] = 0.0  # a row with nothing observed
    return masks


def test_marginal_and_conditional_match_each_rows_sub_blocks(gaussian, masks, rng):
    mean, covariance = gaussian
    x = rng.multivariate_normal(mean, covariance, size=len(masks))
    factor = tf.constant(np.linalg.cholesky(covariance))
    log_prob = gaps.observed_log_prob(tf.constant(x - mean), factor, tf.constant(masks)).numpy()
    fill, variance = (value.numpy() for value in gaps.conditional(
        tf.constant(np.where(masks > 0, x - mean, 123.0)), factor, tf.constant(masks)))
    for row, mask in enumerate(masks.astype(bool)):
        o, u = np.flatnonzero(mask), np.flatnonzero(~mask)
        expected = multivariate_normal(mean[o], covariance[np.ix_(o, o)]).logpdf(x[row, o]) if len(o) else 0.0
        np.testing.assert_allclose(log_prob[row], expected, rtol=1e-9, atol=1e-9)
        regression = covariance[np.ix_(u, o)] @ np.linalg.inv(covariance[np.ix_(o, o)]) if len(o) else np.zeros((len(u), 0))
        np.testing.assert_allclose(fill[row, u], regression @ (x[row, o] - mean[o]), atol=1e-9)
        np.testing.assert_allclose(fill[row, o], x[row, o] - mean[o], atol=1e-9)
        np.testing.assert_allclose(variance[row, u], np.diag(covariance[np.ix_(u, u)] - regression @ covariance[np.ix_(o, u)]),
                                   atol=1e-9)
        np.testing.assert_allclose(variance[row, o], 0.0, atol=1e-9)


def test_draws_given_the_observed_cells_have_the_conditional_moments(gaussian):
    _, covariance = gaussian
    factor = tf.constant(np.linalg.cholesky(covariance))
    mask = tf.constant([1.0, 0.0, 1.0, 0.0, 0.0], tf.float64)
    residual = tf.broadcast_to(tf.constant([0.7, 0.0, -1.2, 0.0, 0.0], tf.float64), [200_000, 5])
    draws = gaps.conditional_draw(residual, factor, mask, seed=[1, 2]).numpy()
    fill, variance = (value.numpy() for value in gaps.conditional(residual[0], factor, mask))
    np.testing.assert_allclose(draws[:, [0, 2]], [[0.7, -1.2]] * len(draws), atol=1e-9)
    np.testing.assert_allclose(draws.mean(axis=0), fill, atol=0.03)
    np.testing.assert_allclose(draws.var(axis=0), variance, rtol=0.02, atol=1e-9)


def test_em_finds_the_covariance_behind_rows_with_gaps_and_is_plain_moments_on_complete_rows(gaussian, rng):
    mean, covariance = gaussian
    x = rng.multivariate_normal(mean, covariance, size=4000)
    em_mean, em_covariance = gaps.em_gaussian(x, prior_rows=1.0)
    np.testing.assert_allclose(em_mean, x.mean(axis=0), atol=1e-8)
    np.testing.assert_allclose(em_covariance, np.cov(x.T, bias=True), rtol=1e-4, atol=1e-4)
    holes = x.copy()
    holes[rng.random(x.shape) < 0.3] = np.nan
    em_mean, em_covariance = gaps.em_gaussian(holes, prior_rows=1.0)
    np.testing.assert_allclose(em_mean, mean, atol=0.1)
    np.testing.assert_allclose(em_covariance, covariance, atol=0.25 * np.abs(covariance).max() ** 0.5)
    pairwise = np.ma.cov(np.ma.masked_invalid(holes).T, bias=True).data
    assert np.abs(em_covariance - np.cov(x.T, bias=True)).max() < np.abs(pairwise - np.cov(x.T, bias=True)).max()


@pytest.mark.parametrize("prior_rows", [0.0, 1.0, 5.0])
def test_with_gaps_em_stops_where_an_m_step_with_the_prior_moves_nothing(gaussian, rng, prior_rows):
    """In standardised units the fit is a fixed point of Sigma = (C + k I) / (n + k), C the expected scatter."""
    mean, covariance = gaussian
    holes = rng.multivariate_normal(mean, covariance, size=30)
    holes[rng.random(holes.shape) < 0.4] = np.nan
    em_mean, em_covariance = gaps.em_gaussian(holes, prior_rows=prior_rows)
    centre, spread = np.nanmean(holes, axis=0), np.nanstd(holes, axis=0)
    mask = ~np.isnan(holes)
    standardised_mean, standardised_covariance = (em_mean - centre) / spread, em_covariance / np.outer(spread, spread)
    filled, total = gaps._expectation(np.where(mask, (holes - centre) / spread, 0.0), mask, standardised_mean,
                                      standardised_covariance)
    centred = filled - standardised_mean
    np.testing.assert_allclose(filled.mean(axis=0), standardised_mean, atol=1e-5)
    np.testing.assert_allclose(standardised_covariance, (centred.T @ centred + total + prior_rows * np.eye(5))
                               / (len(holes) + prior_rows), atol=1e-5)


def test_the_prior_keeps_a_covariance_fitted_to_few_rows_with_many_gaps_away_from_singular(rng):
    """Six nearly collinear columns, 15 rows, half the cells hidden: the fit by maximum likelihood is near
    singular, the one with the prior is not."""
    latent = rng.normal(size=(15, 1))
    holes = latent @ np.ones((1, 6)) + 0.05 * rng.normal(size=(15, 6))
    holes[rng.random(holes.shape) < 0.5] = np.nan

    def least_correlation_eigenvalue(covariance):
        stddev = np.sqrt(np.diag(covariance))
        return np.linalg.eigvalsh(covariance / np.outer(stddev, stddev))[0]

    assert least_correlation_eigenvalue(gaps.em_gaussian(holes, prior_rows=0.0)[1]) < 1e-4
    assert least_correlation_eigenvalue(gaps.em_gaussian(holes, prior_rows=1.0)[1]) > 1e-2


def test_the_expectation_step_is_the_conditional_of_each_rows_observed_cells(rng):
    """E[x_u | x_o] = mu_u + S_uo S_oo^-1 (x_o - mu_o) and the sum of S_uu - S_uo S_oo^-1 S_ou, row by row by
    hand, against the step that works from the precision matrix, chunk by chunk."""
    d = 7
    factor = rng.normal(size=(d, d))
    covariance, mean = factor @ factor.T / d + 0.1 * np.eye(d), rng.normal(size=d)
    x = rng.normal(size=(50, d))
    mask = rng.random(x.shape) > 0.4
    mask[0], mask[1] = True, False  # a complete row and an empty one
    expected_fill, expected_total = np.where(mask, x, 0.0), np.zeros((d, d))
    for row, seen in zip(range(len(x)), mask):
        u, o = ~seen, seen
        gain = covariance[np.ix_(u, o)] @ np.linalg.inv(covariance[np.ix_(o, o)])
        expected_fill[row, u] = mean[u] + gain @ (x[row, o] - mean[o])
        expected_total[np.ix_(u, u)] += covariance[np.ix_(u, u)] - gain @ covariance[np.ix_(o, u)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gaps, "EM_ROWS_PER_CHUNK", 16)
        filled, total = gaps._expectation(np.where(mask, x, 0.0), mask, mean, covariance)
    np.testing.assert_allclose(filled, expected_fill, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(total, expected_total, rtol=1e-10, atol=1e-10)


def test_em_fits_each_table_once_and_hands_out_copies(gaussian, rng, monkeypatch):
    mean, covariance = gaussian
    holes = rng.multivariate_normal(mean, covariance, size=300)
    holes[rng.random(holes.shape) < 0.3] = np.nan
    fitted = []
    fit = gaps._em_fit
    monkeypatch.setattr(gaps, "_em_fit", lambda rows, prior_rows: fitted.append(rows.shape) or fit(rows, prior_rows))
    first_mean, first_covariance = gaps.em_gaussian(holes, prior_rows=1.0)
    first_mean[:] = 0.0  # a caller's change must not reach the next caller
    again_mean, again_covariance = gaps.em_gaussian(holes.astype(np.float64).copy(), prior_rows=1.0)
    assert fitted == [(300, 5)]
    np.testing.assert_array_equal(again_covariance, first_covariance)
    assert np.all(again_mean != 0.0)
    other = holes.copy()
    other[0, 0] = 0.5 if np.isnan(other[0, 0]) else np.nan
    gaps.em_gaussian(other, prior_rows=1.0)
    gaps.em_gaussian(holes, prior_rows=0.0)
    assert fitted == [(300, 5)] * 3
