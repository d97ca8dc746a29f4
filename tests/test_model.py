import gc
import io
import re
import warnings

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework.func_graph import FuncGraph

from tfp_vae import GaussianVAE, config, heads, losses
from tfp_vae import model as model_module
from tfp_vae._keras import tf_keras
from tfp_vae.callbacks import KLWarmup
from tfp_vae.model import mixture_moments

from ppca import ppca_log_likelihood


def trained(x, epochs=3, **kwargs):
    model = GaussianVAE(np.shape(x)[1], **{"code_size": 2, "hidden": (16,), "seed": 0, **kwargs})
    model.compile()
    model.fit(x, epochs=epochs, batch_size=100, verbose=0, shuffle=False)
    return model


def test_mixed_scales_train_to_finite_losses(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=5)
    history = model.history.history
    assert set(history) == {"loss", "reconstruction_loss", "kl_loss", "mse"}
    assert all(np.isfinite(values).all() for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert np.isfinite(model.elbo(mixed_scale_data).numpy()).all()


def test_raw_log_likelihood_is_standardised_minus_sum_log_scale(mixed_scale_data):
    model = trained(mixed_scale_data)
    x = mixed_scale_data[:20]
    z = model.encode(x).mean()
    raw = model.decode(z).log_prob(x).numpy()
    u = model.normalizer(x)
    hidden = model.decoder_mlp(z)
    standardised = model.likelihood.distribution(model.decoder_loc(hidden), model.likelihood(hidden)).log_prob(u)
    np.testing.assert_allclose(raw, standardised.numpy() - np.log(model.normalizer.scale.numpy()).sum(), rtol=1e-4)
    np.testing.assert_allclose(model.normalizer.scale.numpy(), mixed_scale_data.std(axis=0), rtol=1e-3)


def test_outputs_are_in_raw_units(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=5)
    outputs = model.predict(mixed_scale_data, verbose=0)
    assert {name: type(value) for name, value in outputs.items()} == {
        "code_mean": np.ndarray, "mean": np.ndarray, "stddev": np.ndarray, "lower": np.ndarray, "upper": np.ndarray}
    # The interval is mean +- 1.96 stddev, to float32's resolution of the mean (offsets reach 1e4).
    tolerance = 4 * np.finfo(np.float32).eps * np.abs(outputs["mean"]) + 1e-5 * outputs["stddev"]
    for side in (outputs["upper"] - outputs["mean"], outputs["mean"] - outputs["lower"]):
        np.testing.assert_array_less(np.abs(side - 1.959964 * outputs["stddev"]), tolerance)
    assert outputs["code_mean"].shape == (600, 2) and outputs["mean"].shape == (600, 5)
    spread = mixed_scale_data.std(axis=0)
    np.testing.assert_array_less(outputs["stddev"].mean(axis=0), 2 * spread)
    np.testing.assert_array_less(0.01 * spread, outputs["stddev"].mean(axis=0))
    samples = model.sample(2000, seed=1).numpy()
    assert np.all(np.abs(samples.mean(axis=0) - mixed_scale_data.mean(axis=0)) < 0.5 * spread)


def test_validation_loss_is_the_expected_loss_over_a_draw_per_row(mixed_scale_data):
    """Over 2000 copies of one row, the validation loss is the mean over draws, not the loss at one draw."""
    model = trained(mixed_scale_data, epochs=1)
    copies = np.repeat(mixed_scale_data[:1], 2000, axis=0)
    validation = model.evaluate(copies, batch_size=2000, verbose=0, return_dict=True)["loss"]
    per_draw = model.loss_terms(copies, tf.random.stateless_normal([1, 2000, 2], seed=[5, 6]))["loss"].numpy()
    assert per_draw.std() > 0.1
    assert abs(validation - per_draw.mean()) < 5 * per_draw.std() / np.sqrt(2000)
    assert model.evaluate(copies, batch_size=2000, verbose=0, return_dict=True)["loss"] == validation


@pytest.mark.parametrize("decoder_scale", config.DECODER_SCALES)
@pytest.mark.parametrize("posterior", config.POSTERIORS)
def test_every_head_trains(mixed_scale_data, decoder_scale, posterior):
    model = trained(mixed_scale_data, epochs=2, decoder_scale=decoder_scale, posterior=posterior)
    assert np.isfinite(model.history.history["loss"]).all()
    assert np.isfinite(model.score(mixed_scale_data[:10])["elbo"].numpy()).all()


def test_score_is_deterministic_and_batch_independent(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=1)
    whole = model.score(mixed_scale_data[:50])
    part = model.score(mixed_scale_data[10:20])
    np.testing.assert_allclose(whole["elbo"].numpy()[10:20], part["elbo"].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(part["elbo"].numpy(), model.score(mixed_scale_data[10:20])["elbo"].numpy())
    np.testing.assert_allclose(whole["elbo"], whole["reconstruction_log_prob"] - whole["kl"], rtol=1e-6)
    assert np.all(whole["kl"].numpy() >= 0)
    batched = model.score_in_batches(mixed_scale_data[:50], batch_size=7)  # traced; the last batch is shorter
    assert set(batched) == set(whole) and batched["elbo"].shape == (50,)
    for name, value in whole.items():
        np.testing.assert_allclose(batched[name], value.numpy(), rtol=1e-5, atol=1e-5)
    assert model.score_in_batches(mixed_scale_data[:0])["elbo"].shape == (0,)


def test_encode_and_decode_return_distributions(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=1)
    qz = model.encode(mixed_scale_data[:4])
    assert qz.event_shape == [2] and qz.scale.to_dense().shape == (4, 2, 2)
    px = model.decode(qz.mean())
    assert px.event_shape == [5] and px.log_prob(mixed_scale_data[:4]).shape == (4,)
    np.testing.assert_allclose(model(mixed_scale_data[:4])["code_mean"].numpy(), qz.mean().numpy(), rtol=1e-6)
    diagonal = GaussianVAE(5, hidden=(8,), posterior="diagonal", seed=0)
    np.testing.assert_allclose(diagonal(mixed_scale_data[:4])["code_mean"].numpy(),
                               diagonal.encode(mixed_scale_data[:4]).mean().numpy(), rtol=1e-6)


def test_same_seed_same_model(mixed_scale_data):
    first, second = trained(mixed_scale_data), trained(mixed_scale_data)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_and_load_round_trip_and_resume(mixed_scale_data, tmp_path):
    model = trained(mixed_scale_data, decoder_scale="optimal", epochs=1)
    model.save(tmp_path / "model.keras")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded) is GaussianVAE and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.normalizer.mean.numpy(), model.normalizer.mean.numpy())
    np.testing.assert_array_equal(loaded.elbo(mixed_scale_data).numpy(), model.elbo(mixed_scale_data).numpy())
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 6
    for each in (model, loaded):
        each.fit(mixed_scale_data, epochs=1, batch_size=100, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_refuses_formats_that_cannot_reload(tmp_path):
    with pytest.raises(ValueError, match=r"\.keras"):
        GaussianVAE(3).save(tmp_path / "model")


def test_fit_from_a_dataset(mixed_scale_data):
    dataset = tf.data.Dataset.from_tensor_slices(mixed_scale_data).batch(100)
    model = GaussianVAE(5, hidden=(8,), seed=0)
    model.compile()
    history = model.fit(dataset, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    np.testing.assert_allclose(model.normalizer.mean.numpy(), mixed_scale_data.mean(axis=0), rtol=1e-5)


def test_wrong_width_and_non_finite_input_are_clear_errors(mixed_scale_data):
    model = GaussianVAE(4, seed=0)
    model.compile()
    with pytest.raises(ValueError, match=r"expected 4 features per row, got shape \(600, 5\)"):
        model.fit(mixed_scale_data, verbose=0)
    bad = mixed_scale_data[:, :4].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="row 3, column 2"):
        model.fit(bad, verbose=0)
    with pytest.raises(ValueError, match="without y"):
        model.fit(mixed_scale_data[:, :4], mixed_scale_data[:, :4])
    with pytest.raises(ValueError, match="posterior must be one of"):
        GaussianVAE(4, posterior="banana")


def test_constant_column_warns_and_trains(mixed_scale_data):
    x = mixed_scale_data.copy()
    x[:, 1] = 7.0
    with pytest.warns(UserWarning, match=r"constant column\(s\) 1 \(to") as caught:
        model = trained(x, epochs=2)
    assert np.isfinite(model.history.history["loss"]).all()
    assert caught[0].filename == __file__  # the line that called the library, not one inside it


def test_kl_warmup_anneals_beta(mixed_scale_data):
    model = GaussianVAE(5, hidden=(8,), kl_weight=0.5, seed=0)
    model.compile()
    seen = []
    record = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(model.beta.numpy()))
    model.fit(mixed_scale_data, epochs=4, batch_size=200, verbose=0, callbacks=[KLWarmup(epochs=2), record])
    np.testing.assert_allclose(seen, [0.25, 0.5, 0.5, 0.5])


def test_validation_loss_weighs_the_kl_at_its_final_weight(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=1)
    model.beta.assign(0.1)  # mid warm-up
    logs = model.evaluate(mixed_scale_data, batch_size=500, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["reconstruction_loss"] + model.kl_weight * logs["kl_loss"], rel=1e-5)


@pytest.mark.slow
def test_linear_vae_reaches_the_ppca_likelihood(rng):
    d, k = 6, 2
    loadings = rng.normal(size=(k, d)) * [1.0, 3.0, 0.5, 2.0, 1.0, 4.0]
    noise = 0.5
    data = (rng.normal(size=(4000, k)) @ loadings + noise * rng.normal(size=(4000, d)) + 10.0).astype(np.float32)
    train, test = data[:3000], data[3000:]
    model = GaussianVAE(d, code_size=k, hidden=(), decoder_scale="shared", posterior="full", seed=0)
    model.compile(tf_keras.optimizers.Adam(0.02))
    model.fit(train, epochs=60, batch_size=300, verbose=0)
    held_out_elbo = model.elbo(test, num_samples=64).numpy().mean()
    exact = ppca_log_likelihood(train.astype(np.float64), test.astype(np.float64), k)
    assert held_out_elbo <= exact + 0.01 * d
    assert (exact - held_out_elbo) / d < 0.05


def test_fit_from_a_dataset_of_unknown_length(mixed_scale_data):
    dataset = tf.data.Dataset.from_tensor_slices(mixed_scale_data).filter(lambda row: True).batch(100)
    model = GaussianVAE(5, hidden=(8,), seed=0)
    model.compile()
    history = model.fit(dataset, epochs=2, verbose=0).history
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()


def test_whitened_model_reports_raw_units_consistently(mixed_scale_data, tmp_path):
    model = trained(mixed_scale_data, normalization="whiten")
    x = mixed_scale_data[:20]
    outputs = model(x)
    px = model.decode(outputs["code_mean"])
    np.testing.assert_allclose(px.mean().numpy(), outputs["mean"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(px.stddev().numpy(), outputs["stddev"].numpy(), rtol=1e-4)
    loc, scale = model.decoder_params(outputs["code_mean"])
    by_hand = losses.gaussian_log_prob(model.normalizer(x), loc, scale) - model.normalizer.log_det_jacobian()
    # Rows at offsets of 1e4 carry about 1e-3 of float32 rounding into each log-density.
    np.testing.assert_allclose(px.log_prob(x).numpy(), by_hand.numpy(), atol=1e-2)
    samples = model.sample(2000, seed=1).numpy()
    spread = mixed_scale_data.std(axis=0)
    assert np.all(np.abs(samples.mean(axis=0) - mixed_scale_data.mean(axis=0)) < 0.5 * spread)
    model.save(tmp_path / "model.keras")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_config()["normalization"] == "whiten"
    np.testing.assert_array_equal(loaded.elbo(x).numpy(), model.elbo(x).numpy())


def test_whitening_models_correlated_residuals(rng):
    """Six features in pairs that move together, one code unit: only a whitened decoder sees the pairs."""
    factors = rng.normal(size=(3000, 3))
    x = np.repeat(factors, 2, axis=1) + 0.05 * rng.normal(size=(3000, 6))
    x = x.astype(np.float32)
    elbos = {normalization: trained(x, epochs=20, code_size=1, normalization=normalization).elbo(x).numpy().mean()
             for normalization in config.NORMALIZATIONS}
    assert elbos["whiten"] > elbos["standardize"] + 3.0, elbos


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="normalization must be one of"):
        GaussianVAE(3, normalization="minmax")


@pytest.mark.parametrize("options", [
    {}, {"normalization": "whiten"}, {"hidden": ()}, {"posterior": "diagonal", "decoder_scale": "shared"},
    {"decoder_scale": "optimal", "normalization": "whiten"}, {"decoder_scale": "full"},
    {"decoder_scale": "full", "normalization": "whiten"}, {"decoder_scale": "student_t"},
    {"transform": "yeo_johnson"}, {"transform": "yeo_johnson", "normalization": "whiten", "decoder_scale": "full"}],
    ids=str)
def test_folded_call_gives_calls_outputs(mixed_scale_data, options):
    model = trained(mixed_scale_data, **options)
    expected, folded = model(mixed_scale_data), model.folded_call(mixed_scale_data)
    spread = mixed_scale_data.std(axis=0)
    np.testing.assert_allclose(folded["code_mean"].numpy(), expected["code_mean"].numpy(), atol=1e-6)
    # Within 1e-5 of each feature's spread, or a few float32 steps of the value where an offset dwarfs it.
    tolerance = 1e-5 * spread + 4 * np.finfo(np.float32).eps * np.abs(expected["mean"].numpy())
    np.testing.assert_array_less(np.abs(folded["mean"].numpy() - expected["mean"].numpy()), tolerance)
    np.testing.assert_allclose(folded["stddev"].numpy(), expected["stddev"].numpy(), rtol=1e-6)
    half = (expected["upper"] - expected["lower"]).numpy() / 2
    np.testing.assert_allclose((folded["upper"] - folded["lower"]).numpy() / 2, half, rtol=1e-5)


def test_full_covariance_model_round_trips_through_a_keras_file(mixed_scale_data, tmp_path):
    model = trained(mixed_scale_data, decoder_scale="full")
    model.save(tmp_path / "model.keras")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.likelihood.head, heads.DecoderFullNormal)
    x = mixed_scale_data[:20]
    np.testing.assert_array_equal(loaded.elbo(x).numpy(), model.elbo(x).numpy())
    np.testing.assert_array_equal(loaded(x)["stddev"].numpy(), model(x)["stddev"].numpy())


def test_beta_nll_trains_and_is_scored_by_the_likelihood(mixed_scale_data):
    model = trained(mixed_scale_data, nll_beta=0.5)
    x = tf.constant(mixed_scale_data[:64])
    eps = model.draw_noise(64, step=-1)
    weighted = model.loss_terms(x, eps, training=True)["reconstruction_loss"]
    plain = model.loss_terms(x, eps)["reconstruction_loss"]
    assert np.isfinite(plain.numpy()).all() and not np.allclose(weighted.numpy(), plain.numpy())
    np.testing.assert_allclose(plain.numpy(), -model.log_weights(x, eps).log_px.numpy()[0], rtol=1e-6)
    with pytest.raises(ValueError, match="nll_beta weighs a learned sigma"):
        GaussianVAE(3, decoder_scale="full", nll_beta=0.5)


def test_student_t_is_refused_with_whitening():
    with pytest.raises(ValueError, match="student_t' works in standardised units"):
        GaussianVAE(3, decoder_scale="student_t", normalization="whiten")


def test_tiny_but_varying_columns_are_not_called_constant(rng):
    x = np.stack([rng.normal(size=500) * 1e-9, rng.normal(size=500) * 1e-40, np.full(500, 3.0)], axis=1)
    with pytest.warns(UserWarning) as caught:
        model = GaussianVAE(3, hidden=(4,), seed=0).adapt(x.astype(np.float64))
    assert model.normalizer.constant_.tolist() == [False, False, True]  # scored at the decoder's floor
    messages = [str(warning.message) for warning in caught]
    assert any("constant column(s) 2 (to" in m for m in messages), messages
    assert any("column(s) 1 vary by less than float32's smallest normal" in m for m in messages), messages


def test_every_entry_point_gives_the_same_clear_errors(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=1)
    bad_width, bad_rank, with_nan = mixed_scale_data[:, :4], mixed_scale_data[0], mixed_scale_data[:4].copy()
    with_nan[1, 2] = np.nan
    for call in (model.predict, model.encode, model.elbo, model.score):
        with pytest.raises(ValueError, match=r"expected 5 features per row, got shape \(600, 4\)"):
            call(bad_width)
        with pytest.raises(ValueError, match=r"expected a 2-d array \[rows, features\], got shape \(5,\)"):
            call(bad_rank)
        with pytest.raises(ValueError, match="non-finite value nan at row 1, column 2"):
            call(with_nan)
    pairs = tf.data.Dataset.from_tensor_slices((mixed_scale_data, mixed_scale_data)).batch(100)
    with pytest.raises(ValueError, match=r"not of \(x, y\) pairs"):
        model.fit(pairs, verbose=0)


def test_validation_split_rows_do_not_reach_the_statistics(mixed_scale_data):
    x = mixed_scale_data.copy()
    x[480:] += 1e3 * x.std(axis=0)  # the last 20%, which Keras holds out, far away
    model = GaussianVAE(5, hidden=(4,), seed=0)
    model.compile()
    model.fit(x, validation_split=0.2, epochs=1, verbose=0)
    np.testing.assert_allclose(model.normalizer.mean.numpy(), x[:480].mean(axis=0), rtol=1e-5)


def test_keras_3_objects_are_named_as_such():
    keras = pytest.importorskip("keras")
    model = GaussianVAE(3, hidden=(4,), seed=0)
    with pytest.raises(ValueError, match=r"Keras 3 object; .*tf_keras.optimizers.Adam"):
        model.compile(keras.optimizers.Adam())
    model.compile()
    rows = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"Keras 3 object; .*tf_keras.callbacks.EarlyStopping"):
        model.fit(rows, callbacks=[keras.callbacks.EarlyStopping()], verbose=0)


def test_training_reports_a_line_per_epoch(mixed_scale_data):
    import io
    from tfp_vae.callbacks import EpochLines
    stream = io.StringIO()
    model = GaussianVAE(5, hidden=(4,), seed=0)
    model.compile()
    model.fit(mixed_scale_data, epochs=3, batch_size=200, validation_split=0.2, verbose=0,
              callbacks=[EpochLines(3, seconds=0.0, stream=stream)])
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("loss" in line and "val_loss" in line and "\r" not in line for line in lines)


def test_integer_rows_and_nested_lists_train_like_floats(rng):
    counts = rng.poisson(5.0, size=(64, 3))
    as_float = trained(counts.astype(np.float32), epochs=2)
    as_int = trained(counts, epochs=2)
    as_list = trained(counts.tolist(), epochs=2)
    for model in (as_int, as_list):
        np.testing.assert_allclose(model.get_weights()[0], as_float.get_weights()[0], rtol=1e-5)
    assert as_int.predict(counts, verbose=0)["mean"].shape == (64, 3)


def test_counts_sizes_and_settings_out_of_range_are_clear_errors(mixed_scale_data):
    from tfp_vae.errors import DataError, TfpVaeError
    model = trained(mixed_scale_data, epochs=1)
    for call, message in [
        (lambda: model.sample(-1), "num_samples must be a whole number of at least 0, got -1"),
        (lambda: model.sample(2.5), "num_samples must be a whole number of at least 0, got 2.5"),
        (lambda: model.elbo(mixed_scale_data, num_samples=0), "num_samples must be a whole number of at least 1"),
        (lambda: GaussianVAE(3, min_scale=-1.0), "min_scale must be in (0, 1)"),
        (lambda: GaussianVAE(3, kl_weight=float("nan")), "kl_weight must be finite and not negative"),
    ]:
        with pytest.raises(TfpVaeError, match=re.escape(message)):
            call()
    with pytest.raises(DataError, match=re.escape("z: expected codes of size 2 [..., 2], got shape (4, 5)")):
        model.decode(np.zeros((4, 5), np.float32))
    assert model.sample(0).shape == (0, mixed_scale_data.shape[1])
    with pytest.raises(DataError, match="1 row.s. with a value in each column is too few to fit"):
        trained(mixed_scale_data[:1], epochs=1)


def test_impute_checks_its_counts_and_fills_no_rows(rng):
    from tfp_vae.errors import TfpVaeError
    x = rng.normal(size=(40, 3)).astype(np.float32)
    x[::4, 1] = np.nan
    model = trained(x, epochs=1, allow_missing=True)
    with pytest.raises(TfpVaeError, match="draws must be a whole number of at least 0, got -1"):
        model.impute(x, draws=-1)
    with pytest.raises(TfpVaeError, match="num_samples must be a whole number of at least 1, got 0"):
        model.impute(x, num_samples=0)
    filled, stddev, draws = model.impute(x[:0], draws=3)
    assert filled.shape == stddev.shape == (0, 3) and draws.shape == (3, 0, 3)


def test_importance_samples_train_on_the_importance_weighted_bound(mixed_scale_data):
    model = trained(mixed_scale_data, epochs=2, importance_samples=4)
    x = tf.constant(mixed_scale_data[:32])
    eps = model.draw_noise(32, step=-1)
    assert eps.shape == (4, 32, 2)
    weights = model.log_weights(x, eps)
    log_weight = (weights.log_px + weights.log_pz - weights.log_qz).numpy()
    by_hand = np.log(np.mean(np.exp(log_weight - log_weight.max(0)), axis=0)) + log_weight.max(0)
    np.testing.assert_allclose(model.loss_terms(x, eps)["loss"].numpy(), -by_hand, rtol=1e-5)
    model.beta.assign(0.25)  # a KL warm-up's weight scales log p(z) - log q(z|x) inside each weight
    annealed = (weights.log_px + 0.25 * (weights.log_pz - weights.log_qz)).numpy()
    by_hand = np.log(np.mean(np.exp(annealed - annealed.max(0)), axis=0)) + annealed.max(0)
    np.testing.assert_allclose(model.loss_terms(x, eps, training=True)["loss"].numpy(), -by_hand, rtol=1e-5)
    assert GaussianVAE.from_config(model.get_config()).importance_samples == 4
    one = trained(mixed_scale_data, epochs=2)  # one draw: the ELBO with its analytic KL, as before
    eps = one.draw_noise(32, step=-1)
    terms = one.loss_terms(x, eps)
    np.testing.assert_allclose(terms["loss"].numpy(), (terms["reconstruction_loss"] + terms["kl_loss"]).numpy(),
                               rtol=1e-6)


def test_importance_samples_out_of_range_or_beside_beta_nll_are_refused():
    from tfp_vae.errors import TfpVaeError
    for kwargs, message in [
        (dict(importance_samples=0), "importance_samples must be a whole number of at least 1, got 0"),
        (dict(importance_samples=2.5), "importance_samples must be a whole number of at least 1, got 2.5"),
        (dict(importance_samples=3, nll_beta=0.5), "nll_beta reweighs the ELBO's likelihood term"),
    ]:
        with pytest.raises(TfpVaeError, match=re.escape(message)):
            GaussianVAE(3, **kwargs)
    with pytest.raises(TfpVaeError, match="importance_samples applies to the gaussian model"):
        config.Config(model="question", importance_samples=5)
    with pytest.raises(TfpVaeError, match="importance_samples must be at least 1, got 0"):
        config.Config(importance_samples=0)


def test_an_untrained_linear_model_is_the_gaussian_of_its_rows(mixed_scale_data):
    """`to_gaussian`, whitened: the full-covariance Gaussian (population covariance); standardised: independent
    columns. Whatever the code's draws, log p(x) is that Gaussian's, in nats of the raw data."""
    x = mixed_scale_data.astype(np.float64)
    centred = x - x.mean(axis=0)
    for normalization, covariance in (("whiten", np.cov(x.T, bias=True)), ("standardize", np.diag(x.var(axis=0)))):
        model = GaussianVAE(5, code_size=2, hidden=(), decoder_scale="shared", normalization=normalization,
                            seed=0).adapt(mixed_scale_data).to_gaussian()
        truth = -0.5 * (5 * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1]
                        + np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred))
        np.testing.assert_allclose(model.score(mixed_scale_data[:50], num_samples=3)["elbo"], truth[:50],
                                   atol=1e-3)
    from tfp_vae.errors import TfpVaeError
    with pytest.raises(TfpVaeError, match="only a linear model"):
        GaussianVAE(5, hidden=(8,), decoder_scale="shared").to_gaussian()
    with pytest.raises(TfpVaeError, match="epochs=0 trains nothing"):
        config.Config(epochs=0, hidden=(8,), decoder_scale="shared")
    assert config.Config(epochs=0, hidden=(), decoder_scale="shared").epochs == 0


def test_mixture_moments_by_hand():
    """0.25 N(0, 1) + 0.75 N(4, 2^2): mean 3, second moment about it 0.25 (1 + 9) + 0.75 (4 + 1) = 2.5^2."""
    moments = mixture_moments(tf.constant([[0.25], [0.75]]), tf.constant([[0.0], [4.0]]), tf.constant([[1.0], [2.0]]))
    np.testing.assert_allclose([value.numpy()[0] for value in moments], [3.0, 2.5])
    # A component of weight 0 counts for nothing, even one past float32's range; a mixture past it is inf, not NaN.
    past = tf.constant([[np.inf], [2.0]]), tf.constant([[np.inf], [1.0]])
    assert [value.numpy()[0] for value in mixture_moments(tf.constant([[0.0], [1.0]]), *past)] == [2.0, 1.0]
    assert [value.numpy()[0] for value in mixture_moments(tf.constant([[0.5], [0.5]]), *past)] == [np.inf, np.inf]


def test_mixture_of_equal_components_is_exactly_their_value():
    """1,000 float32 weights sum to 1 only to their rounding: summed times 5 they gave 4.999997."""
    weights = tf.nn.softmax(tf.constant(np.random.default_rng(0).normal(size=[1000, 4, 1]) * 3, tf.float32), axis=0)
    mean, stddev = mixture_moments(weights, tf.fill([1000, 4, 2], 5.0), tf.fill([1000, 4, 2], 1e-6))
    assert (mean.numpy() == 5.0).all()
    np.testing.assert_allclose(stddev.numpy(), 1e-6, rtol=1e-5)


@pytest.mark.parametrize("maps, room", [(49, True), (50, False)])
def test_models_stop_using_xla_past_half_the_memory_maps_linux_allows(monkeypatch, maps, room):
    """XLA never frees a model's compiled code: past half of `vm.max_map_count` (100 here) compile leaves it off, once
    warned, rather than let LLVM crash the process at the limit."""
    files = {"/proc/sys/vm/max_map_count": "100\n", "/proc/self/maps": "a map\n" * maps}
    monkeypatch.setattr(model_module, "open", lambda path: io.StringIO(files[path]), raising=False)
    model = GaussianVAE(2, code_size=1, hidden=(4,), seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile()
    assert model._jit_compile is room
    assert [str(w.message).startswith("this process has compiled many models with XLA") for w in caught] == (
        [] if room else [True])


def test_a_dropped_model_leaves_no_graph_behind():
    """Outside tf.distribute the train step must not trace the optimizer's sum over replicas: its tf.custom_gradient
    lands in TensorFlow's global gradient registry and keeps the whole train graph alive, 25 MB a model."""
    x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)

    def graphs_after_a_model(seed):
        model = GaussianVAE(3, code_size=1, hidden=(4,), seed=seed)
        model.compile(jit_compile=False)
        model.fit(x, epochs=1, batch_size=100, verbose=0)
        del model
        gc.collect()
        return sum(isinstance(o, FuncGraph) for o in gc.get_objects())

    first = graphs_after_a_model(0)
    assert graphs_after_a_model(1) == first


def test_fit_on_integer_columns_warns_naming_them(rng):
    counts = np.column_stack([rng.normal(size=64), rng.poisson(3.0, 64), np.full(64, 2.0)]).astype(np.float32)
    with pytest.warns(UserWarning, match=r"column\(s\) 1 hold only integers: .* add U\(-0.5, 0.5\) noise"):
        GaussianVAE(3, code_size=1, hidden=(4,), seed=0).adapt(counts)
    with pytest.warns(UserWarning) as caught:  # the constant column's warning alone: a constant is no count
        GaussianVAE(3, code_size=1, hidden=(4,), seed=0).adapt(counts + [0.0, 0.5, 0.0])
    assert [str(warning.message).startswith("constant column(s) 2") for warning in caught] == [True]
    huge = np.column_stack([rng.normal(size=64) * 1e37, rng.integers(-2**24, 2**24, 64)]).astype(np.float32)
    with pytest.warns(UserWarning, match=r"column\(s\) 1 hold only integers"):  # 0: whole numbers, not counts
        GaussianVAE(2, code_size=1, hidden=(4,), seed=0).adapt(huge)


def test_draws_round_the_integer_columns_to_whole_numbers_and_leave_the_rest(rng):
    from tfp_vae.errors import TfpVaeError
    counts = rng.poisson(3.0, 300) + rng.uniform(-0.5, 0.5, 300)  # dequantised, as `tfp_vae.train` reads them
    x = np.column_stack([rng.normal(size=300), counts, rng.normal(size=300)]).astype(np.float32)
    model = trained(x, allow_missing=True, integer_columns=[1])
    plain = GaussianVAE.from_config({**model.get_config(), "integer_columns": []})
    plain.set_weights(model.get_weights())
    assert model.integer_columns == (1,) and GaussianVAE.from_config(model.get_config()).integer_columns == (1,)
    drawn, continuous = model.sample(500, seed=2).numpy(), plain.sample(500, seed=2).numpy()
    np.testing.assert_array_equal(drawn[:, [0, 2]], continuous[:, [0, 2]])
    np.testing.assert_array_equal(drawn[:, 1], np.round(continuous[:, 1]) + 0.0)
    assert not np.any(np.signbit(drawn[:, 1]) & (drawn[:, 1] == 0))  # no "-0" in a written file
    assert not np.array_equal(continuous[:, 1], np.round(continuous[:, 1]))
    gappy = x[:40].copy()
    gappy[::2, 1], gappy[1::2, 0] = np.nan, np.nan
    filled, _, draws = model.impute(gappy, draws=3, seed=1)
    plain_filled, _, plain_draws = plain.impute(gappy, draws=3, seed=1)
    np.testing.assert_array_equal(filled, plain_filled)  # a fill is a mean: not rounded
    np.testing.assert_array_equal(draws[:, ::2, 1], np.round(plain_draws[:, ::2, 1]) + 0.0)
    np.testing.assert_array_equal(draws[:, 1::2, 1], np.broadcast_to(gappy[1::2, 1], (3, 20)))  # observed: as given
    np.testing.assert_array_equal(draws[:, :, 0], plain_draws[:, :, 0])
    with pytest.raises(TfpVaeError,
                       match=re.escape("integer_columns must be indices of the data's columns (0 to 2), got [3]")):
        GaussianVAE(3, integer_columns=[3])
    with pytest.raises(TfpVaeError, match="integer_columns applies to the gaussian model"):
        config.Config(model="question", integer_columns=[0])
    with pytest.raises(TfpVaeError, match=re.escape("integer_columns must be indices of the data's columns (0 to 1)")):
        config.Config(input_size=2, integer_columns=[2])
