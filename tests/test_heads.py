import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import heads

LAYERS = [
    heads.MLP(units=(4, 5), activation="tanh", seed=3, name="mlp"),
    heads.FullPosterior(event_size=2, name="posterior"),
    heads.DiagonalPosterior(event_size=2, name="posterior"),
    heads.DecoderNormal(event_size=3, min_scale=0.01, name="likelihood"),
    heads.DecoderFullNormal(event_size=3, min_scale=0.01, name="likelihood"),
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


@pytest.mark.parametrize("head", [heads.FullPosterior, heads.DiagonalPosterior])
def test_prior_params_give_the_standard_normal(head):
    qz = head(3)(tf.constant(head.prior_params(3))[tf.newaxis])
    np.testing.assert_allclose(qz.mean().numpy(), np.zeros([1, 3]))
    np.testing.assert_allclose(qz.covariance().numpy(), np.eye(3)[np.newaxis], rtol=1e-6)


def test_decoder_scale_is_floored():
    params = tf.concat([tf.zeros([2, 3]), tf.fill([2, 3], -1e4)], axis=-1)
    px = heads.DecoderNormal(3, min_scale=0.01)(params)
    np.testing.assert_allclose(px.stddev().numpy(), 0.01)
    assert np.isfinite(px.log_prob(tf.fill([2, 3], 5.0)).numpy()).all()
