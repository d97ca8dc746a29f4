"""Filling gaps with a weighted blend of models (`tfp_vae.blend`)."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import GaussianVAE, export_saved_model
from tfp_vae.blend import FillBlend


@pytest.fixture(scope="module")
def members():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 2)) @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(400, 5)) + 2.0
    gappy = np.where(rng.random(x.shape) < 0.3, np.nan, x).astype(np.float32)
    models = []
    for hidden, normalization in (((8,), "standardize"), ((), "whiten")):
        model = GaussianVAE(5, code_size=2, hidden=hidden, normalization=normalization, allow_missing=True, seed=0)
        model.compile()
        model.fit(gappy, epochs=2, batch_size=100, verbose=0)
        models.append(model)
    return models, gappy[:40]


def test_the_blend_fills_with_the_weighted_mean_and_the_mixtures_spread(members):
    models, rows = members
    blend = FillBlend(models, [0.3, 0.7])
    filled, stddev, draws = blend.impute(rows, draws=50, num_samples=200, seed=4)
    (first, first_sd, first_draws), (second, second_sd, second_draws) = (
        model.impute(rows, draws=50, num_samples=200, seed=4) for model in models)
    gaps = np.isnan(rows)
    np.testing.assert_allclose(filled[gaps], (0.3 * first + 0.7 * second)[gaps], rtol=1e-6)
    mixture = np.sqrt(0.3 * (first_sd**2 + (first - filled) ** 2) + 0.7 * (second_sd**2 + (second - filled) ** 2))
    np.testing.assert_allclose(stddev[gaps], mixture[gaps], rtol=1e-5)
    np.testing.assert_array_equal(filled[~gaps], rows[~gaps])  # bit for bit
    assert np.all(stddev[~gaps] == 0)
    # Each row's draw is one member's draw of it, the members picked about as often as their weights.
    gappy_rows = gaps.any(axis=1)
    from_first = np.all((draws == first_draws) | ~gaps, axis=2)[:, gappy_rows]
    from_second = np.all((draws == second_draws) | ~gaps, axis=2)[:, gappy_rows]
    assert np.all(from_first != from_second)
    assert abs(from_first.mean() - 0.3) < 0.05
    np.testing.assert_array_equal(blend.impute(rows, draws=50, num_samples=200, seed=4)[2], draws)
    # All the weight on one member is that member.
    alone = FillBlend(models, [0.0, 1.0]).impute(rows, num_samples=200, seed=4)
    np.testing.assert_array_equal(alone[0], second)
    np.testing.assert_allclose(alone[1], second_sd, rtol=1e-6)


def test_the_saved_models_impute_signature_serves_the_blend(members, tmp_path):
    models, rows = members
    blend = FillBlend(models, [0.4, 0.6])
    loaded = tf.saved_model.load(export_saved_model(models[0], tmp_path / "exports", imputer=blend))
    served = loaded.signatures["impute"](x=tf.constant(rows))
    filled, stddev = blend.imputation(tf.constant(rows))
    np.testing.assert_allclose(served["x"].numpy(), filled.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served["stddev"].numpy(), stddev.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(served["x"].numpy()[~np.isnan(rows)], rows[~np.isnan(rows)])
    # The other signatures stay the model's.
    np.testing.assert_allclose(loaded.signatures["score"](x=tf.constant(rows))["elbo"].numpy(),
                               models[0].score(rows)["elbo"].numpy(), rtol=1e-5, atol=1e-4)


def test_weights_must_be_one_per_member_non_negative_and_sum_to_one(members):
    models, _ = members
    for weights in ([1.0], [0.5, 0.6], [-0.5, 1.5]):
        with pytest.raises(ValueError, match="one non-negative weight per member"):
            FillBlend(models, weights)
