import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import QuestionVAE, implied_sigma
from tfp_vae._keras import tf_keras


def leaky_relu(a):
    return np.where(a > 0, a, 0.2 * a)


def softplus(a):
    return np.log1p(np.exp(a))


def test_loss_is_the_questions_formula_in_numpy(rng):
    model = QuestionVAE(input_size=4, code_size=2, seed=0)
    x = (rng.normal(size=(8, 4)) * 3).astype(np.float32)
    eps = rng.normal(size=(1, 8, 2)).astype(np.float32)
    (w1, b1), (w2, b2), (w3, b3), (w4, b4) = [
        (layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64))
        for layer in (model.encoder_hidden, model.encoder_params, model.decoder_hidden, model.decoder_output)]
    params = leaky_relu(x @ w1 + b1) @ w2 + b2
    loc, scale = params[:, :2], softplus(params[:, 2:])
    z = loc + scale * eps[0]
    reconstruction = leaky_relu(z @ w3 + b3) @ w4 + b4
    kl = 0.5 * np.sum(loc**2 + scale**2 - np.log(scale**2) - 1, axis=1)
    expected = np.mean((x - reconstruction) ** 2, axis=1) + 1e-4 * kl
    terms = model.loss_terms(tf.constant(x), tf.constant(eps))
    np.testing.assert_allclose(terms["loss"].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(terms["kl_loss"].numpy(), kl, rtol=1e-5)


def test_architecture_is_the_questions():
    model = QuestionVAE(input_size=7, code_size=3)
    layers = (model.encoder_hidden, model.encoder_params, model.decoder_hidden, model.decoder_output)
    assert [layer.units for layer in layers] == [7, 6, 7, 7]
    assert [layer.activation for layer in layers] == [tf.nn.leaky_relu, tf_keras.activations.linear,
                                                      tf.nn.leaky_relu, tf_keras.activations.linear]
    assert model.kl_weight == 1e-4


def test_code_is_the_posterior_mean_and_stddev_the_implied_sigma(rng):
    model = QuestionVAE(input_size=5, code_size=2, kl_weight=1e-3, seed=0)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    outputs = model.predict(x, verbose=0)
    np.testing.assert_allclose(outputs["code_mean"], model.encode(x).mean().numpy())
    np.testing.assert_allclose(outputs["stddev"], implied_sigma(1e-3, 5))
    assert model.implied_sigma == pytest.approx(np.sqrt(1e-3 * 5 / 2))


def test_raw_data_in_the_thousands_trains_without_nan(rng):
    x = (rng.normal(size=(300, 4)) * [1.0, 10.0, 100.0, 1000.0] + 1000.0).astype(np.float32)
    model = QuestionVAE(input_size=4, seed=0)
    model.compile()
    history = model.fit(x, epochs=3, batch_size=50, verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]
    assert np.isfinite(model.score(x)["elbo"].numpy()).all()


def test_fitted_stddev_is_the_root_mean_squared_error_and_beats_the_implied_one(rng):
    x = (rng.normal(size=(300, 4)) * 5.0).astype(np.float32)
    model = QuestionVAE(input_size=4, seed=0)
    model.compile()
    model.fit(x, epochs=3, batch_size=50, verbose=0)
    fitted = model.with_fitted_stddev(x)
    reconstruction = model.predict(x, verbose=0)["mean"]
    assert fitted.stddev_ == pytest.approx(np.sqrt(np.mean((x - reconstruction) ** 2)), rel=0.2)
    np.testing.assert_allclose(fitted.predict(x[:3], verbose=0)["stddev"], fitted.stddev_, rtol=1e-6)
    assert fitted.elbo(x).numpy().mean() > model.elbo(x).numpy().mean()
    np.testing.assert_array_equal(fitted.encode(x[:3]).mean(), model.encode(x[:3]).mean())
