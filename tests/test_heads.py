import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import heads, losses
from tfp_vae.data import RunningMoments

LAYERS = [
    heads.Standardize(input_size=3, name="standardize"),
    heads.Whiten(input_size=3, name="standardize"),
    heads.MLP(units=(4, 5), activation="tanh", seed=3, name="mlp"),
    heads.FullPosterior(event_size=2, name="posterior"),
    heads.DiagonalPosterior(event_size=2, name="posterior"),
    heads.DecoderNormal(event_size=3, min_scale=0.01, name="likelihood"),
    heads.DecoderFullNormal(event_size=3, min_scale=0.01, name="likelihood"),
    heads.DecoderScale(event_size=3, mode="fixed", min_scale=0.01, fixed_scale=0.5, seed=1, name="scale"),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_get_config_is_exactly_the_constructor_arguments(layer):
    config = layer.get_config()
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    constructor_arguments = set(type(layer).__init__.__code__.co_varnames[1:type(layer).__init__.__code__.co_argcount])
    assert constructor_arguments <= set(config)
    assert set(config) - constructor_arguments <= {"name", "trainable", "dtype"}


def test_heads_are_the_tfp_layers_the_design_names():
    assert isinstance(heads.FullPosterior(2), tfp.layers.MultivariateNormalTriL)
    assert isinstance(heads.DecoderNormal(3), tfp.layers.IndependentNormal)
    assert isinstance(heads.DecoderFullNormal(3), tfp.layers.MultivariateNormalTriL)


def test_full_posterior_has_a_lower_triangular_scale():
    qz = heads.FullPosterior(3)(tf.ones([2, heads.FullPosterior.params_size(3)]))
    scale = qz.scale.to_dense().numpy()
    assert scale.shape == (2, 3, 3)
    np.testing.assert_array_equal(np.triu(scale, 1), 0.0)
    assert np.all(np.diagonal(scale, axis1=1, axis2=2) > 0)


def test_fill_scale_tril_fills_rows_in_order_with_a_positive_diagonal():
    params = np.arange(1.0, 7.0, dtype=np.float32) - 3.0
    softplus = lambda v: np.log1p(np.exp(v)) + 1e-5
    expected = np.array([[softplus(-2.0), 0, 0], [-1.0, softplus(0.0), 0], [1.0, 2.0, softplus(3.0)]])
    np.testing.assert_allclose(heads.fill_scale_tril(tf.constant(params), 3).numpy(), expected, rtol=1e-6)


def test_decoder_scale_is_floored():
    params = tf.concat([tf.zeros([2, 3]), tf.fill([2, 3], -1e4)], axis=-1)
    px = heads.DecoderNormal(3, min_scale=0.01)(params)
    np.testing.assert_allclose(px.stddev().numpy(), 0.01)
    assert np.isfinite(px.log_prob(tf.fill([2, 3], 5.0)).numpy()).all()


@pytest.mark.parametrize("mode, expected", [("fixed", 0.5), ("shared", 1.0), ("optimal", 1.0)])
def test_decoder_scale_modes_start_where_documented(mode, expected):
    layer = heads.DecoderScale(3, mode=mode, min_scale=1e-3, fixed_scale=0.5)
    raw = layer(tf.zeros([4, 7]))
    assert raw.shape == (4, 3)
    np.testing.assert_allclose(heads.decoder_scale(raw, 1e-3).numpy(), expected, rtol=1e-5)


def test_full_decoder_scale_starts_at_the_identity_and_floors_its_diagonal():
    layer = heads.DecoderScale(3, mode="full", min_scale=1e-3, seed=0)
    raw = layer(tf.zeros([4, 7]))
    assert raw.shape == (4, heads.DecoderScale.params_size(3, "full")) == (4, 6)
    scale = layer.scale(raw)
    assert isinstance(scale, tf.linalg.LinearOperatorLowerTriangular)
    np.testing.assert_allclose(scale.to_dense().numpy(), np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-6)
    px = heads.DecoderFullNormal(3, min_scale=0.01)(tf.fill([2, heads.DecoderFullNormal.params_size(3)], -1e4))
    np.testing.assert_allclose(np.diagonal(px.scale.to_dense().numpy(), axis1=1, axis2=2), 0.01)
    assert np.isfinite(px.log_prob(tf.fill([2, 3], 5.0)).numpy()).all()


def test_optimal_scale_follows_the_squared_error():
    layer = heads.DecoderScale(1, mode="optimal")
    for _ in range(200):
        layer.update_optimal(tf.constant([0.25]))
    np.testing.assert_allclose(heads.decoder_scale(layer(tf.zeros([1, 2])), layer.min_scale).numpy(), 0.5, rtol=1e-3)


def test_standardize_floors_a_constant_column_and_maps_back():
    layer = heads.Standardize(2)
    layer.set_moments(mean=[5.0, 1e4], stddev=[0.0, 2.0])
    assert layer.scale.numpy()[0] > 0
    np.testing.assert_allclose(layer(tf.constant([[5.0, 1e4 + 2.0]])).numpy(), [[0.0, 1.0]])


def test_unknown_decoder_scale_is_refused():
    with pytest.raises(ValueError, match="decoder_scale must be one of"):
        heads.DecoderScale(3, mode="sometimes")


def whitened(x):
    stats = RunningMoments(covariance=True)
    stats.update(x)
    layer = heads.Whiten(x.shape[1])
    layer.set_moments(stats.mean, stats.stddev, stats.count, stats.covariance)
    return layer


def test_whiten_matches_its_docstring_example():
    layer = heads.Whiten(2)
    layer.set_moments(mean=[0.0, 0.0], stddev=[1.0, 10.0], covariance=[[1.0, 8.0], [8.0, 100.0]])
    np.testing.assert_allclose(layer(tf.constant([[1.0, 10.0]])).numpy(), [[1 / np.sqrt(1.8)] * 2], rtol=1e-5)


def test_whitened_unit_noise_is_the_full_covariance_gaussian(rng):
    mixing = [[1.0, 0.9, 0.0], [0.0, 0.3, -0.5], [0.0, 0.0, 0.1]]
    x = rng.normal(size=(500, 3)) @ mixing * [1e-3, 1.0, 1e4] + [2e-3, 0, -1e4]
    x32 = x.astype(np.float32)
    x = x32.astype(np.float64)
    layer = whitened(x)
    u = layer(x32)
    np.testing.assert_allclose(np.cov(u.numpy(), rowvar=False, bias=True), np.eye(3), atol=1e-3)
    np.testing.assert_allclose((layer.inverse(u).numpy() - x32) / x.std(axis=0), 0.0, atol=1e-4)
    centred, covariance = x - x.mean(axis=0), np.cov(x, rowvar=False, bias=True)
    expected = -0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1]
                       + np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred))
    zeros, ones = tf.zeros([500, 3]), tf.ones([500, 3])
    np.testing.assert_allclose(layer.raw_distribution(zeros, ones).log_prob(x32).numpy(), expected, rtol=1e-4)
    through_model_units = losses.gaussian_log_prob(u, zeros, ones) - layer.log_det_jacobian()
    np.testing.assert_allclose(through_model_units.numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(layer.raw_stddev(ones).numpy()[0], x.std(axis=0), rtol=1e-4)


@pytest.mark.parametrize("whiten", [False, True], ids=["standardize", "whiten"])
def test_a_full_model_unit_scale_maps_to_its_raw_covariance(rng, whiten):
    """Model units u = x_std M^-1 with S S^T their covariance: raw covariance diag(s) M^T S S^T M diag(s)."""
    x = rng.normal(size=(400, 3)) @ [[1.0, 0.7, 0.0], [0.0, 0.5, 0.4], [0.0, 0.0, 1.0]] * [1e-3, 1.0, 1e4] + [5e-3, 0, -1e4]
    layer = whitened(x) if whiten else heads.Standardize(3)
    if not whiten:
        layer.set_moments(x.mean(axis=0), x.std(axis=0))
    tril = np.tril(rng.normal(size=(5, 3, 3)), -1) * 0.5 + np.eye(3) * rng.uniform(0.3, 1.5, size=(5, 1, 3))
    scale = tf.linalg.LinearOperatorLowerTriangular(tril.astype(np.float32))
    loc = rng.normal(size=(5, 3)).astype(np.float32)
    mixing = layer.mixing.numpy().astype(np.float64) if whiten else np.eye(3)
    raw_factor = layer.scale.numpy()[:, None].astype(np.float64) * (mixing.T @ tril)
    covariance = raw_factor @ np.swapaxes(raw_factor, 1, 2)
    np.testing.assert_allclose(layer.raw_stddev(scale).numpy(), np.sqrt(np.diagonal(covariance, axis1=1, axis2=2)),
                               rtol=1e-5)
    rows = layer.inverse(loc).numpy().astype(np.float64) + np.einsum("bij,bj->bi", raw_factor, rng.normal(size=(5, 3)))
    through_model_units = losses.gaussian_log_prob(layer(rows.astype(np.float32)), loc, scale) - layer.log_det_jacobian()
    raw = layer.raw_distribution(loc, scale).log_prob(rows.astype(np.float32))
    np.testing.assert_allclose(raw.numpy(), through_model_units.numpy(), rtol=1e-4)
    centred = rows - layer.inverse(loc).numpy()
    expected = [-0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(c)[1] + r @ np.linalg.solve(c, r))
                for r, c in zip(centred, covariance)]
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-3)


def test_whiten_keeps_collinear_and_constant_columns_finite(rng):
    a = rng.normal(size=(200, 1))
    x = np.hstack([a, 2 * a, np.full_like(a, 3.0), rng.normal(size=(200, 1))])
    layer = whitened(x)
    assert np.isfinite(layer(x.astype(np.float32)).numpy()).all()
    assert np.isfinite(layer.log_det_jacobian().numpy())
    assert np.isfinite(layer.raw_distribution(tf.zeros([2, 4]), tf.ones([2, 4])).log_prob(x[:2]).numpy()).all()


def test_whiten_needs_the_covariance():
    with pytest.raises(ValueError, match="covariance"):
        heads.Whiten(2).set_moments(mean=[0.0, 0.0], stddev=[1.0, 1.0])


@pytest.mark.parametrize("whiten", [False, True], ids=["standardize", "whiten"])
def test_fold_output_is_the_inverse_of_a_dense_layer(rng, whiten):
    x = rng.normal(size=(300, 3)) @ [[1.0, 0.8, 0.0], [0.0, 0.6, 0.3], [0.0, 0.0, 1.0]] * [1e-3, 1.0, 1e4] + [5e-3, -2.0, 1e4]
    layer = whitened(x) if whiten else heads.Standardize(3)
    if not whiten:
        layer.set_moments(x.mean(axis=0), x.std(axis=0))
    hidden, kernel, bias = rng.normal(size=(7, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    mixing = layer.mixing.numpy().astype(np.float64) if whiten else np.eye(3)
    scale, mean = layer.scale.numpy().astype(np.float64), layer.mean.numpy().astype(np.float64)
    expected = (hidden @ kernel + bias) @ mixing * scale + mean
    folded_kernel, folded_bias = layer.fold_output(tf.constant(kernel, tf.float32), tf.constant(bias, tf.float32))
    np.testing.assert_allclose((hidden @ folded_kernel.numpy() + folded_bias.numpy() - expected) / scale, 0.0, atol=1e-4)
