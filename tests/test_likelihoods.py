import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfp_vae import config, heads
from tfp_vae.errors import TfpVaeError
from tfp_vae.likelihoods import (LIKELIHOODS, FixedNormal, FullCovarianceNormal, OptimalNormal, StudentT,
                                 make_likelihood)
from tfp_vae.normalization import Standardize


def test_the_registry_holds_every_name_the_config_offers():
    assert tuple(LIKELIHOODS) == config.DECODER_SCALES


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_get_config_is_exactly_the_constructor_arguments(name):
    likelihood = make_likelihood(name, 3, min_scale=0.01, seed=1, fixed_scale=0.5, name="likelihood")
    layer_class = type(likelihood)
    config_ = likelihood.get_config()
    assert layer_class.from_config(config_).get_config() == config_
    code = layer_class.__init__.__code__
    assert set(code.co_varnames[1:code.co_argcount]) <= set(config_)
    assert set(config_) - set(code.co_varnames[1:code.co_argcount]) <= {"name", "trainable", "dtype"}


@pytest.mark.parametrize("name, expected", [("learned", 1.0), ("shared", 1.0), ("optimal", 1.0), ("fixed", 0.5)])
def test_every_diagonal_likelihood_starts_where_documented(name, expected):
    likelihood = make_likelihood(name, 3, min_scale=1e-3, seed=0, fixed_scale=0.5)
    raw = likelihood(tf.zeros([4, 7]))
    assert raw.shape == (4, likelihood.params_size(3)) == (4, 3)
    np.testing.assert_allclose(likelihood.scale(raw).numpy(), expected, rtol=1e-5)
    loc, sigma = likelihood.parameters(tf.zeros([4, 3]), raw)
    np.testing.assert_allclose(sigma.numpy(), expected, rtol=1e-5)


def test_full_covariance_starts_at_the_identity_and_floors_its_diagonal():
    likelihood = FullCovarianceNormal(3, min_scale=1e-3, seed=0)
    raw = likelihood(tf.zeros([4, 7]))
    assert raw.shape == (4, FullCovarianceNormal.params_size(3)) == (4, 6)
    assert FullCovarianceNormal.chunk_width(3) == 9
    np.testing.assert_allclose(likelihood.scale(raw).numpy(), np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-6)
    floored = likelihood.scale(tf.fill([2, 6], -1e4)).numpy()
    np.testing.assert_allclose(np.diagonal(floored, axis1=1, axis2=2), 1e-3)


def test_full_covariance_log_prob_is_numpys(rng):
    tril = np.tril(rng.normal(size=(5, 3, 3)), -1) + np.eye(3) * rng.uniform(0.5, 2.0, size=(5, 1, 3))
    loc, u = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    expected = [stats.multivariate_normal(m, s @ s.T).logpdf(x) for m, s, x in zip(loc, tril, u)]
    got = FullCovarianceNormal(3).log_prob(*(tf.constant(a, tf.float32) for a in (u, loc, tril)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_diagonal_log_prob_and_raw_units_are_numpys(rng):
    loc, sigma, u = rng.normal(size=(4, 3)), rng.uniform(0.5, 2.0, size=(4, 3)), rng.normal(size=(4, 3))
    likelihood = make_likelihood("learned", 3, 1e-3, 0, 1.0)
    got = likelihood.log_prob(*(tf.constant(a, tf.float32) for a in (u, loc, sigma)))
    np.testing.assert_allclose(got.numpy(), stats.norm(loc, sigma).logpdf(u).sum(axis=1), rtol=1e-5)
    normalizer = Standardize(3)
    normalizer.set_moments(mean=[1.0, -2.0, 1e4], stddev=[1e-3, 1.0, 50.0])
    scale = normalizer.scale.numpy()
    np.testing.assert_allclose(likelihood.raw_stddev(normalizer, tf.constant(sigma, tf.float32)).numpy(),
                               sigma * scale, rtol=1e-6)
    raw = likelihood.raw_distribution(normalizer, tf.constant(loc, tf.float32), tf.constant(sigma, tf.float32))
    np.testing.assert_allclose(raw.mean().numpy(), loc * scale + [1.0, -2.0, 1e4], rtol=1e-6)


def test_optimal_follows_the_squared_error_and_trains_on_the_batchs():
    likelihood = OptimalNormal(1)
    u, loc = tf.ones([2, 1]), tf.constant([[0.5], [1.5]])
    np.testing.assert_allclose(likelihood.training_scale(u, loc, None).numpy(), [0.5], rtol=1e-6)
    for _ in range(200):
        likelihood.training_scale(u, loc, None)
    np.testing.assert_allclose(likelihood.scale(likelihood(tf.zeros([1, 2]))).numpy(), 0.5, rtol=1e-3)
    learned = make_likelihood("learned", 1, 1e-3, 0, 1.0)
    assert learned.training_scale(u, loc, "unchanged") == "unchanged"


def test_unknown_or_impossible_likelihoods_are_refused():
    with pytest.raises(TfpVaeError, match="decoder_scale must be one of"):
        make_likelihood("sometimes", 3, 1e-3, 0, 1.0)
    with pytest.raises(TfpVaeError, match="fixed_scale must exceed"):
        FixedNormal(3, min_scale=0.5, fixed_scale=0.1)


def test_every_likelihood_ends_in_the_tfp_layer_the_design_names():
    expected = {FullCovarianceNormal: heads.DecoderFullNormal, StudentT: heads.DecoderStudentT}
    for name, likelihood_class in LIKELIHOODS.items():
        head = make_likelihood(name, 3, 1e-3, 0, 1.0).head
        assert isinstance(head, expected.get(likelihood_class, heads.DecoderNormal))


def test_student_t_starts_nearly_gaussian_and_its_raw_units_are_scipys(rng):
    likelihood = StudentT(3, min_scale=1e-3, seed=0)
    raw = likelihood(tf.zeros([4, 7]))
    assert raw.shape == (4, StudentT.params_size(3)) == (4, 6)
    sigma, df = likelihood.scale(raw)
    np.testing.assert_allclose(sigma.numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(df.numpy(), StudentT.INITIAL_DF, rtol=1e-5)
    loc, sigma, df = rng.normal(size=(4, 3)), rng.uniform(0.5, 2.0, size=(4, 3)), rng.uniform(2.5, 9.0, size=(4, 3))
    u = rng.standard_t(df) * sigma + loc
    as_tensors = [tf.constant(a, tf.float32) for a in (u, loc, sigma, df)]
    np.testing.assert_allclose(likelihood.log_prob(as_tensors[0], as_tensors[1], tuple(as_tensors[2:])).numpy(),
                               stats.t(df, loc, sigma).logpdf(u).sum(axis=1), rtol=1e-5)
    normalizer = Standardize(3)
    normalizer.set_moments(mean=[1.0, -2.0, 1e4], stddev=[1e-3, 1.0, 50.0])
    scale = normalizer.scale.numpy()
    pair = tuple(as_tensors[2:])
    np.testing.assert_allclose(likelihood.raw_stddev(normalizer, pair).numpy(),
                               sigma * np.sqrt(df / (df - 2)) * scale, rtol=1e-5)
    np.testing.assert_allclose(likelihood.half_width(normalizer, pair, 0.95).numpy(),
                               stats.t.ppf(0.975, df) * sigma * scale, rtol=1e-4)
    raw = likelihood.raw_distribution(normalizer, as_tensors[1], pair)
    x = (u * scale + [1.0, -2.0, 1e4]).astype(np.float32)
    np.testing.assert_allclose(raw.log_prob(x).numpy(),
                               stats.t(df, loc * scale + [1.0, -2.0, 1e4], sigma * scale).logpdf(x).sum(axis=1),
                               rtol=1e-4)


def test_a_gaussian_interval_is_the_normal_quantile_times_the_stddev():
    normalizer = Standardize(2)
    normalizer.set_moments(mean=[0.0, 5.0], stddev=[2.0, 0.5])
    likelihood = make_likelihood("learned", 2, 1e-3, 0, 1.0)
    sigma = tf.constant([[1.0, 3.0]])
    np.testing.assert_allclose(likelihood.half_width(normalizer, sigma, 0.95).numpy(),
                               stats.norm.ppf(0.975) * np.array([[2.0, 1.5]]), rtol=1e-5)
