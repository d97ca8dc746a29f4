import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import losses
from tfp_vae._keras import tf_keras
from tfp_vae.data import RunningMoments
from tfp_vae.normalization import NORMALIZERS, Standardize, Whiten, constant_columns, scale_floor, tiny_columns


@pytest.mark.parametrize("layer_class", NORMALIZERS.values(), ids=lambda cls: cls.__name__)
def test_get_config_is_exactly_the_constructor_arguments(layer_class):
    layer = layer_class(input_size=3, name="normalizer")
    assert layer_class.from_config(layer.get_config()).get_config() == layer.get_config() == {
        **tf_keras.layers.Layer(name="normalizer").get_config(), "input_size": 3}


def test_constant_columns_are_those_below_float32_resolution_of_their_mean():
    eps, tiny = np.finfo(np.float32).eps, np.finfo(np.float32).tiny
    mean, stddev = np.array([1e4, 3.0, 0.0, 1e4, 0.0, 0.0, 5e-9]), np.array([1e-4, 0.0, 1.0, 1.0, 1e-9, 1e-40, 1e-9])
    np.testing.assert_allclose(scale_floor(mean), np.maximum(eps * np.abs(mean), tiny))
    np.testing.assert_array_equal(constant_columns(mean, stddev), [0, 1])  # 1e-9 around 0 or 5e-9 varies
    np.testing.assert_array_equal(tiny_columns(mean, stddev), [5])


def test_standardize_floors_a_constant_column_and_maps_back():
    layer = Standardize(2)
    layer.set_moments(mean=[5.0, 1e4], stddev=[0.0, 2.0])
    assert layer.scale.numpy()[0] > 0
    np.testing.assert_allclose(layer(tf.constant([[5.0, 1e4 + 2.0]])).numpy(), [[0.0, 1.0]])


def whitened(x):
    stats = RunningMoments(covariance=True)
    stats.update(x)
    layer = Whiten(x.shape[1])
    layer.set_moments(stats.mean, stats.stddev, stats.count, stats.covariance)
    return layer


def test_whiten_matches_its_docstring_example():
    layer = Whiten(2)
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
    np.testing.assert_allclose(layer.raw_normal(zeros, ones).log_prob(x32).numpy(), expected, rtol=1e-4)
    through_model_units = losses.gaussian_log_prob(u, zeros, ones) - layer.log_det_jacobian()
    np.testing.assert_allclose(through_model_units.numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(layer.raw_stddev(ones).numpy()[0], x.std(axis=0), rtol=1e-4)


@pytest.mark.parametrize("whiten", [False, True], ids=["standardize", "whiten"])
def test_a_full_model_unit_scale_maps_to_its_raw_covariance(rng, whiten):
    """Model units u = x_std M^-1 with S S^T their covariance: raw covariance diag(s) M^T S S^T M diag(s)."""
    x = rng.normal(size=(400, 3)) @ [[1.0, 0.7, 0.0], [0.0, 0.5, 0.4], [0.0, 0.0, 1.0]] * [1e-3, 1.0, 1e4] + [5e-3, 0, -1e4]
    layer = whitened(x) if whiten else Standardize(3)
    if not whiten:
        layer.set_moments(x.mean(axis=0), x.std(axis=0))
    tril = np.tril(rng.normal(size=(5, 3, 3)), -1) * 0.5 + np.eye(3) * rng.uniform(0.3, 1.5, size=(5, 1, 3))
    scale = tf.constant(tril, tf.float32)
    loc = rng.normal(size=(5, 3)).astype(np.float32)
    mixing = layer.mixing.numpy().astype(np.float64) if whiten else np.eye(3)
    raw_factor = layer.scale.numpy()[:, None].astype(np.float64) * (mixing.T @ tril)
    covariance = raw_factor @ np.swapaxes(raw_factor, 1, 2)
    np.testing.assert_allclose(layer.raw_stddev_tril(scale).numpy(), np.sqrt(np.diagonal(covariance, axis1=1, axis2=2)),
                               rtol=1e-5)
    rows = layer.inverse(loc).numpy().astype(np.float64) + np.einsum("bij,bj->bi", raw_factor, rng.normal(size=(5, 3)))
    through_model_units = (losses.gaussian_log_prob_tril(layer(rows.astype(np.float32)), loc, scale)
                           - layer.log_det_jacobian())
    raw = layer.raw_normal_tril(loc, scale).log_prob(rows.astype(np.float32))
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
    assert np.isfinite(layer.raw_normal(tf.zeros([2, 4]), tf.ones([2, 4])).log_prob(x[:2]).numpy()).all()


def test_whiten_needs_the_covariance():
    with pytest.raises(ValueError, match="covariance"):
        Whiten(2).set_moments(mean=[0.0, 0.0], stddev=[1.0, 1.0])


@pytest.mark.parametrize("whiten", [False, True], ids=["standardize", "whiten"])
def test_fold_output_is_the_inverse_of_a_dense_layer(rng, whiten):
    x = rng.normal(size=(300, 3)) @ [[1.0, 0.8, 0.0], [0.0, 0.6, 0.3], [0.0, 0.0, 1.0]] * [1e-3, 1.0, 1e4] + [5e-3, -2.0, 1e4]
    layer = whitened(x) if whiten else Standardize(3)
    if not whiten:
        layer.set_moments(x.mean(axis=0), x.std(axis=0))
    hidden, kernel, bias = rng.normal(size=(7, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    mixing = layer.mixing.numpy().astype(np.float64) if whiten else np.eye(3)
    scale, mean = layer.scale.numpy().astype(np.float64), layer.mean.numpy().astype(np.float64)
    expected = (hidden @ kernel + bias) @ mixing * scale + mean
    folded_kernel, folded_bias = layer.fold_output(tf.constant(kernel, tf.float32), tf.constant(bias, tf.float32))
    np.testing.assert_allclose((hidden @ folded_kernel.numpy() + folded_bias.numpy() - expected) / scale, 0.0, atol=1e-4)
