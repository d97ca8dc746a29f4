"""Per-feature transforms: the log and Yeo-Johnson maths against numpy, their fits, and transformed models' densities
and fills."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import GaussianVAE
from tfp_vae._keras import tf_keras
from tfp_vae.data import moments
from tfp_vae.errors import TfpVaeError
from tfp_vae.normalization import FLOAT32_TINY
from tfp_vae.transforms import (QUADRATURE_NODES, Identity, Log, YeoJohnson, fit_yeo_johnson, tailed_yeo_johnson,
                                tailed_yeo_johnson_inverse, tailed_yeo_johnson_log_derivative, yeo_johnson,
                                yeo_johnson_inverse, yeo_johnson_log_derivative)


def numpy_yeo_johnson(s, lam):
    """The textbook definition, branch by branch."""
    s = np.asarray(s, np.float64)
    positive = np.log1p(s) if lam == 0 else ((1 + np.abs(s)) ** lam - 1) / lam
    negative = -np.log1p(-s) if lam == 2 else -((1 + np.abs(s)) ** (2 - lam) - 1) / (2 - lam)
    return np.where(s >= 0, positive, negative)


S = np.array([-30.0, -2.5, -0.3, 0.0, 0.4, 3.0, 40.0])


@pytest.mark.parametrize("lam", [0.05, 0.5, 1.0, 1.7, 1.99])
def test_yeo_johnson_matches_its_definition_and_inverts(lam):
    t = yeo_johnson(tf.constant(S, tf.float64), tf.constant(lam, tf.float64)).numpy()
    np.testing.assert_allclose(t, numpy_yeo_johnson(S, lam), rtol=1e-12)
    np.testing.assert_allclose(yeo_johnson_inverse(tf.constant(t), tf.constant(lam, tf.float64)).numpy(), S,
                               rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(t) > 0)


@pytest.mark.parametrize("lam", [0.05, 0.5, 1.7])
def test_log_derivative_matches_finite_differences(lam):
    step = 1e-6
    numeric = (numpy_yeo_johnson(S + step, lam) - numpy_yeo_johnson(S - step, lam)) / (2 * step)
    analytic = yeo_johnson_log_derivative(tf.constant(S, tf.float64), tf.constant(lam, tf.float64)).numpy()
    np.testing.assert_allclose(analytic, np.log(numeric), atol=1e-6)


@pytest.mark.parametrize("lam", [0.05, 1.0, 1.7])
def test_tails_continue_the_transform_by_its_tangent_and_invert(lam):
    low, high = -2.0, 3.0
    args = [tf.constant(v, tf.float64) for v in (lam, low, high)]
    t = tailed_yeo_johnson(tf.constant(S, tf.float64), *args).numpy()
    inside = (S >= low) & (S <= high)
    np.testing.assert_allclose(t[inside], numpy_yeo_johnson(S[inside], lam), rtol=1e-12)
    for edge, beyond in [(low, S < low), (high, S > high)]:
        slope = (numpy_yeo_johnson(edge + 1e-6, lam) - numpy_yeo_johnson(edge - 1e-6, lam)) / 2e-6
        np.testing.assert_allclose(t[beyond], numpy_yeo_johnson(edge, lam) + slope * (S[beyond] - edge), rtol=1e-6)
        log_derivative = tailed_yeo_johnson_log_derivative(tf.constant(S[beyond], tf.float64), *args).numpy()
        np.testing.assert_allclose(log_derivative, np.log(slope), atol=1e-6)
    np.testing.assert_allclose(tailed_yeo_johnson_inverse(tf.constant(t), *args).numpy(), S, rtol=1e-10)


def test_an_infinite_range_is_the_plain_transform_with_finite_gradients():
    s, lam = tf.constant(S, tf.float64), tf.constant(0.3, tf.float64)
    low, high = tf.constant(-np.inf, tf.float64), tf.constant(np.inf, tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s, lam])
        t = tailed_yeo_johnson(s, lam, low, high)
        back = tailed_yeo_johnson_inverse(yeo_johnson(s, lam), lam, low, high)
    np.testing.assert_array_equal(t.numpy(), yeo_johnson(s, lam).numpy())
    np.testing.assert_allclose(back.numpy(), S, rtol=1e-10)
    for gradient in tape.gradient(t, [s, lam]) + tape.gradient(back, [s, lam]):
        assert np.all(np.isfinite(gradient.numpy()))


def test_fit_finds_the_most_gaussian_power(rng):
    normal, lognormal = rng.normal(size=4000), rng.lognormal(size=4000)
    rows = np.stack([normal, (lognormal - lognormal.mean()) / lognormal.std(), -lognormal], axis=1)
    lam = fit_yeo_johnson(rows)
    assert abs(lam[0] - 1.0) < 0.1, lam  # already Gaussian: left alone
    assert lam[1] < 0.5 < 1.5 < lam[2], lam  # a long right tail pulled in; a long left one
    grid = np.linspace(0.01, 1.99, 397)
    for feature in range(3):  # the golden-section search lands on the brute-force maximum
        scores = [np.log(np.var(numpy_yeo_johnson(rows[:, feature], g))) * -0.5
                  + np.mean(np.where(rows[:, feature] >= 0, g - 1, 1 - g) * np.log1p(np.abs(rows[:, feature])))
                  for g in grid]
        assert abs(lam[feature] - grid[int(np.argmax(scores))]) < 0.01


@pytest.fixture(scope="module")
def skewed():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1500, 1))
    x = np.exp(z @ [[1.0, 0.5, 0.0]] + 0.3 * rng.normal(size=(1500, 3))) * [1.0, 1e3, 1.0] + [0.0, 0.0, 5.0]
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def transformed(skewed):
    model = GaussianVAE(3, code_size=1, hidden=(8,), normalization="whiten", transform="yeo_johnson", seed=0)
    model.compile()
    model.fit(skewed, epochs=3, batch_size=100, verbose=0)
    return model


def test_the_density_is_of_the_raw_numbers(transformed, skewed):
    """log p(x|z) = the Gaussian of the transformed, whitened row + the log-Jacobian, checked in numpy."""
    model, rows, z = transformed, skewed[:6], np.array([[0.3]], np.float32)
    loc, sigma = (value.numpy().astype(np.float64) for value in model.decoder_params(z))
    marginals, normalizer = model.marginals, model.normalizer
    mean, scale, lam = (np.float64(v.numpy()) for v in (marginals.mean, marginals.scale, marginals.lam))
    s = (rows - mean) / scale
    t = np.stack([numpy_yeo_johnson(s[:, d], lam[d]) for d in range(3)], axis=1)
    u = ((t - normalizer.mean.numpy()) / normalizer.scale.numpy()) @ normalizer.unmixing.numpy().astype(np.float64)
    log_jacobian = (np.where(s >= 0, lam - 1, 1 - lam) * np.log1p(np.abs(s)) - np.log(scale)).sum(axis=1)
    expected = (-0.5 * ((u - loc) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(axis=1) \
        + log_jacobian - model.normalizer.log_det_jacobian().numpy()
    np.testing.assert_allclose(model.decode(z).log_prob(rows).numpy(), expected, rtol=1e-4, atol=1e-3)
    eps = tf.zeros([1, 6, 1])  # the seam scores the same density
    weights = model.log_weights(tf.constant(rows), eps)
    z_at_mean = model.encode(rows).mean().numpy()
    np.testing.assert_allclose(weights.log_px.numpy()[0],
                               [model.decode(z_at_mean[i:i + 1]).log_prob(rows[i:i + 1]).numpy()[0] for i in range(6)],
                               rtol=1e-4, atol=1e-3)


def test_raw_outputs_are_the_moments_and_quantiles_of_samples(transformed):
    z = np.array([[-0.5], [0.8]], np.float32)
    mean, stddev, lower, upper = (v.numpy() for v in transformed.decoder_outputs(z))
    draws = transformed.decode(z).sample(400_000, seed=3).numpy()
    np.testing.assert_allclose(mean, draws.mean(axis=0), rtol=0.01)
    np.testing.assert_allclose(stddev, draws.std(axis=0), rtol=0.03)
    np.testing.assert_allclose((draws < lower).mean(axis=0), 0.025, atol=0.0015)  # se 0.00025
    np.testing.assert_allclose((draws < upper).mean(axis=0), 0.975, atol=0.0015)
    assert np.all(upper - mean > 1.2 * (mean - lower)), "skewed columns get skewed intervals, unlike mean +- 2 sd"


def test_the_transform_trains_with_the_model_and_survives_saving(transformed, skewed, tmp_path):
    fitted = YeoJohnson(3)
    fitted.fit(moments(skewed), skewed)
    assert not np.allclose(transformed.marginals.lam.numpy(), fitted.lam.numpy())
    assert np.all(fitted.lam.numpy() < 0.6)  # every column has a long right tail
    transformed.save(tmp_path / "model.keras")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.elbo(skewed[:50]).numpy(), transformed.elbo(skewed[:50]).numpy(), rtol=1e-5)
    assert loaded.get_config()["transform"] == "yeo_johnson"


def test_moments_whose_far_nodes_pass_float32_stay_finite_and_past_it_are_inf():
    """Near a log transform (lam 0.01) the quadrature's far nodes pass float32's range long before the mean does;
    a mean past it is inf, with an inf standard deviation, never NaN."""
    layer = YeoJohnson(1)
    layer.raw_lambda.assign([np.log(0.01 / 1.99)])
    lam = np.float64(layer.lam.numpy()[0])
    mean, stddev, _, _ = (value.numpy()[:, 0] for value in layer.raw_outputs(
        tf.zeros([2, 1]), tf.constant([[15.0], [40.0]]), tf.ones([2, 1])))
    nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    t = 15.0 * np.sqrt(2.0) * nodes
    s = np.where(t >= 0, (1 + lam * np.abs(t)) ** (1 / lam) - 1, 1 - (1 + (2 - lam) * np.abs(t)) ** (1 / (2 - lam)))
    assert s.max() > np.finfo(np.float32).max
    expected_mean = np.sum(weights * s) / np.sqrt(np.pi)
    expected_stddev = np.sqrt(np.sum(weights * (s - expected_mean) ** 2) / np.sqrt(np.pi))
    np.testing.assert_allclose([mean[0], stddev[0]], [expected_mean, expected_stddev], rtol=1e-5)
    assert mean[1] == np.inf and stddev[1] == np.inf


def test_fills_past_the_training_range_grow_linearly_not_exponentially():
    """Right-skewed rows fit a small lam, near log(1 + s), whose inverse grows exponentially. Past the rows' range
    the tails keep raw and transformed units linear to each other."""
    rows = np.random.default_rng(0).lognormal(sigma=0.8, size=[200, 1]).astype(np.float32)
    layer = YeoJohnson(1)
    layer.fit(moments(rows), rows)
    s_range = (rows.min(), rows.max())
    assert layer.lam.numpy()[0] < 0.5
    np.testing.assert_allclose(layer.inverse(layer(rows)).numpy(), rows, rtol=1e-5)
    np.testing.assert_allclose([layer.low.numpy()[0], layer.high.numpy()[0]],
                               (np.array(s_range) - layer.mean.numpy()[0]) / layer.scale.numpy()[0], rtol=1e-5)
    t_high = layer(np.float32([[rows.max()]])).numpy()[0, 0]
    raw = layer.inverse(tf.constant([[t_high + 1.0], [t_high + 2.0], [t_high + 3.0]])).numpy()[:, 0]
    np.testing.assert_allclose(np.diff(raw), np.diff(raw)[0], rtol=1e-4)
    plain = YeoJohnson(1)
    plain.fit(moments(rows), rows)
    plain.high.assign([np.inf])
    assert plain.inverse(tf.constant([[t_high + 3.0]])).numpy()[0, 0] > 2 * raw[-1]
    mean, stddev, _, _ = (value.numpy()[0, 0] for value in layer.raw_outputs(
        tf.constant([[t_high + 40.0]]), tf.constant([[40.0]]), tf.ones([1, 1])))
    assert np.isfinite(mean) and np.isfinite(stddev)


def test_a_file_written_before_the_range_was_kept_loads_without_tails():
    layer = YeoJohnson(2)
    layer.load_own_variables({"0": np.float32([0.5, -0.5]), "1": np.float32([1.0, 2.0]), "2": np.float32([3.0, 4.0])})
    np.testing.assert_array_equal(layer.raw_lambda.numpy(), [0.5, -0.5])
    np.testing.assert_array_equal(layer.scale.numpy(), [3.0, 4.0])
    assert np.all(layer.low.numpy() == -np.inf) and np.all(layer.high.numpy() == np.inf)
    x = tf.constant([[100.0, -100.0]])
    s = (x - layer.mean) / layer.scale
    np.testing.assert_array_equal(layer(x).numpy(), yeo_johnson(s, layer.lam).numpy())


def test_identity_changes_nothing():
    layer = Identity(2)
    x = tf.constant([[1.0, -2.0]])
    assert layer(x) is x and float(layer.log_jacobian(x)) == 0.0
    mean, stddev, lower, upper = layer.raw_outputs(x, x, tf.ones_like(x))
    np.testing.assert_array_equal(lower.numpy(), [[0.0, -3.0]])


def test_a_transform_is_fitted_on_training_rows_only(skewed):
    model = GaussianVAE(3, code_size=1, hidden=(), transform="yeo_johnson", seed=0)
    model.compile()
    model.fit(skewed, epochs=1, batch_size=100, validation_split=0.5, verbose=0)
    first_half = YeoJohnson(3)
    first_half.fit(moments(skewed[:750]), skewed[:750])
    np.testing.assert_allclose(model.marginals.mean.numpy(), first_half.mean.numpy(), rtol=1e-6)
    with pytest.raises(TfpVaeError, match="training rows"):
        GaussianVAE(3, transform="yeo_johnson").set_statistics(moments(skewed))


def test_log_takes_the_columns_positive_in_every_training_row_and_inverts():
    rows = np.array([[1.0, -1.0, 2.0], [np.e, 2.0, 3.0]])
    layer = Log(3)
    layer.fit(moments(np.r_[rows, [[5.0, 1.0, 0.0]]]), rows)  # the third column's 0 is past the rows passed
    np.testing.assert_array_equal(layer.logged.numpy(), [1.0, 0.0, 0.0])
    x = tf.constant([[np.e**2, -3.0, 4.0]])
    np.testing.assert_allclose(layer(x).numpy(), [[2.0, -3.0, 4.0]], rtol=1e-6)
    np.testing.assert_allclose(layer.inverse(layer(x)).numpy(), x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(layer.log_jacobian(x).numpy(), -2.0, rtol=1e-6)  # log dt/dx = -log x
    np.testing.assert_array_equal(layer.log_jacobian(x, tf.constant([[0.0, 1.0, 1.0]])).numpy(), [0.0])  # gap: nothing
    # A value at or below 0 where the training rows had none lies outside the support: read as float32's smallest
    # normal number, finite.
    np.testing.assert_allclose(layer(tf.constant([[0.0, 1.0, 1.0], [-5.0, 1.0, 1.0]])).numpy()[:, 0],
                               np.log(FLOAT32_TINY), rtol=1e-6)


def test_log_raw_outputs_are_the_log_normals():
    layer = Log(2)
    layer.logged.assign([1.0, 0.0])
    mean, stddev = tf.constant([[0.5, 0.5], [-1.0, 2.0]]), tf.constant([[0.3, 0.3], [1.2, 1.2]])
    raw_mean, raw_stddev, lower, upper = (v.numpy() for v in layer.raw_outputs(mean, stddev, 2.0 * stddev))
    m, s = mean.numpy()[:, 0].astype(np.float64), stddev.numpy()[:, 0].astype(np.float64)
    np.testing.assert_allclose(raw_mean[:, 0], np.exp(m + s**2 / 2), rtol=1e-5)
    np.testing.assert_allclose(raw_stddev[:, 0], np.exp(m + s**2 / 2) * np.sqrt(np.expm1(s**2)), rtol=1e-5)
    np.testing.assert_allclose([lower[:, 0], upper[:, 0]], [np.exp(m - 2 * s), np.exp(m + 2 * s)], rtol=1e-5)
    np.testing.assert_array_equal([raw_mean[:, 1], raw_stddev[:, 1]], [mean.numpy()[:, 1], stddev.numpy()[:, 1]])
    far = layer.raw_outputs(tf.constant([[-200.0, 0.0], [0.0, 0.0]]), tf.constant([[14.0, 1.0], [0.0, 1.0]]),
                            tf.ones([2, 2]))
    assert not np.isnan(np.concatenate([v.numpy().ravel() for v in far])).any()  # 0 x inf nowhere


@pytest.fixture(scope="module")
def log_normal_rows():
    """Two correlated log-normal columns and one Gaussian column of any sign."""
    covariance = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]]) * 0.25
    t = np.random.default_rng(7).multivariate_normal([1.0, 2.0, 0.0], covariance, size=3000)
    return np.c_[np.exp(t[:, :2]), t[:, 2]].astype(np.float32)


def test_the_untrained_log_gaussian_is_the_log_normal_in_closed_form(log_normal_rows):
    x = log_normal_rows
    model = GaussianVAE(3, code_size=3, hidden=(), normalization="whiten", transform="log", decoder_scale="shared",
                        allow_missing=True, seed=0)
    model.adapt(x)
    model.to_gaussian()
    t = np.c_[np.log(x[:, :2].astype(np.float64)), x[:, 2]]
    centred = t - t.mean(axis=0)
    covariance = centred.T @ centred / len(t)
    exact = -0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1]
                    + np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred)) - t[:, :2].sum(axis=1)
    np.testing.assert_allclose(model.elbo(x[:50]).numpy(), exact[:50], rtol=1e-4, atol=1e-3)
    # The first column filled from the others: the log-normal of its conditional, positive however far out the row.
    gappy = np.r_[x[:5], [[np.nan, 1e-6, 40.0]]]
    gappy[:, 0] = np.nan
    filled, stddev = model.impute(gappy)
    gain = covariance[0, 1:] @ np.linalg.inv(covariance[1:, 1:])
    observed = np.c_[np.log(gappy[:, 1].astype(np.float64)), gappy[:, 2]]
    log_mean = t.mean(axis=0)[0] + (observed - t.mean(axis=0)[1:]) @ gain
    log_variance = covariance[0, 0] - gain @ covariance[1:, 0]
    np.testing.assert_allclose(filled[:, 0], np.exp(log_mean + log_variance / 2), rtol=1e-3)
    np.testing.assert_allclose(stddev[:, 0], np.exp(log_mean + log_variance / 2) * np.sqrt(np.expm1(log_variance)),
                               rtol=1e-3)
    assert np.all(filled[:, 0] > 0) and filled[-1, 0] < np.exp(t[:, 0].min())
    draws = model.impute(gappy, draws=200, seed=1)[2]
    assert np.all(draws[..., 0] > 0) and np.all(model.sample(2000, seed=1).numpy()[:, :2] > 0)
    # A row with 0 or a negative value where the training rows were all positive: finite, far below the others.
    outside = x[:2].copy()
    outside[0, 0], outside[1, 1] = 0.0, -3.0
    scores = model.elbo(outside).numpy()
    assert np.all(np.isfinite(scores)) and np.all(scores < model.elbo(x[:200]).numpy().min() - 1000)
    outside[:, 2] = np.nan
    assert np.all(np.isfinite(model.impute(outside)[0]))


def test_a_log_model_trains_and_survives_saving(log_normal_rows, tmp_path):
    model = GaussianVAE(3, code_size=1, hidden=(8,), normalization="whiten", transform="log", seed=0)
    model.compile()
    model.fit(log_normal_rows, epochs=2, batch_size=100, verbose=0)
    np.testing.assert_array_equal(model.marginals.logged.numpy(), [1.0, 1.0, 0.0])
    model.save(tmp_path / "model.keras")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.elbo(log_normal_rows[:50]).numpy(), model.elbo(log_normal_rows[:50]).numpy(),
                               rtol=1e-5)
    assert loaded.get_config()["transform"] == "log"
    assert np.all(loaded.predict(log_normal_rows[:50], verbose=0)["lower"][:, :2] > 0)


@pytest.mark.parametrize("value", [5.0, 0.0])
def test_a_constant_column_adds_the_same_density_to_every_untrained_gaussian(rng, value):
    """Its cells are scored at the decoder's floor (`min_scale`) of float32's resolution at the value, whatever
    the normalisation, the transform or the gaps: the model choice then compares the columns that vary."""
    a = rng.normal(size=300)
    varying = np.c_[a, 3 * a + rng.normal(size=300), np.exp(rng.normal(size=300))].astype(np.float32)
    rows = np.c_[varying, np.full(300, value, np.float32)]
    resolution = max(np.finfo(np.float32).eps * value, FLOAT32_TINY)
    expected = -0.5 * np.log(2 * np.pi) - np.log(1e-3 * resolution)
    for normalization, transform, allow_missing in [("standardize", "none", False), ("whiten", "none", False),
                                                    ("whiten", "log", False), ("whiten", "yeo_johnson", False),
                                                    ("whiten", "yeo_johnson", True)]:
        def elbo(x):
            model = GaussianVAE(x.shape[1], code_size=2, hidden=(), decoder_scale="shared", seed=0,
                                normalization=normalization, transform=transform, allow_missing=allow_missing)
            return model.adapt(x[:200]).to_gaussian().elbo(x[200:]).numpy()
        with pytest.warns(UserWarning, match="constant column"):
            added = elbo(rows) - elbo(varying)
        np.testing.assert_allclose(added, expected, atol=0.01, err_msg=f"{normalization}, {transform}")
