"""The missingness mechanisms p(s|x), by hand in numpy, and not-MIWAE on data missing not at random."""

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import Config, GaussianVAE, export_saved_model
from tfp_vae._keras import tf_keras
from tfp_vae.errors import TfpVaeError
from tfp_vae.missingness import AtRandom, SelfMasking, SelfMaskingHigh, SelfMaskingLow

from test_missing import linear_gaussian


def test_self_masking_is_a_logistic_of_each_cells_own_value(rng):
    layer = SelfMasking(3)
    layer.weight.assign([2.0, -1.0, 0.5])
    layer.offset.assign([0.3, 0.0, -1.0])
    u = rng.normal(size=(5, 3)).astype(np.float32)
    mask = (rng.random((5, 3)) < 0.5).astype(np.float32)
    missing = 1.0 / (1.0 + np.exp(-np.array([2.0, -1.0, 0.5]) * (u - [0.3, 0.0, -1.0])))
    expected = np.sum(mask * np.log(1.0 - missing) + (1.0 - mask) * np.log(missing), axis=1)
    np.testing.assert_allclose(layer.log_prob(tf.constant(u), tf.constant(mask)).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(SelfMasking(3).log_prob(u, mask).numpy(), 3 * np.log(0.5), rtol=1e-6)  # at the start
    np.testing.assert_array_equal(AtRandom(3).log_prob(u, mask).numpy(), np.zeros(5))


def test_a_known_direction_keeps_the_slopes_sign(rng):
    u = rng.normal(size=(5, 2)).astype(np.float32)
    mask = (rng.random((5, 2)) < 0.5).astype(np.float32)
    for layer, sign in ((SelfMaskingHigh(2), 1.0), (SelfMaskingLow(2), -1.0)):
        np.testing.assert_allclose(layer.slope.numpy(), sign * np.log(2.0), rtol=1e-6)  # softplus(0)
        layer.weight.assign([-30.0, 3.0])  # any v: the sign stays
        slope = sign * np.log1p(np.exp([-30.0, 3.0]))
        np.testing.assert_allclose(layer.slope.numpy(), slope, rtol=1e-5)
        missing = 1.0 / (1.0 + np.exp(-slope * u))
        expected = np.sum(mask * np.log(1.0 - missing) + (1.0 - mask) * np.log(missing), axis=1)
        np.testing.assert_allclose(layer.log_prob(tf.constant(u), tf.constant(mask)).numpy(), expected, rtol=1e-5)
        assert type(layer).from_config(layer.get_config()).direction == sign


def test_self_masking_needs_gaps_and_an_untransformed_per_feature_gaussian_in_standardised_units():
    for settings, message in ((dict(), "needs allow_missing=True"),
                              (dict(allow_missing=True, normalization="whiten"), "normalization='standardize'"),
                              (dict(allow_missing=True, decoder_scale="student_t"), "normalization='standardize'"),
                              (dict(allow_missing=True, transform="yeo_johnson"), "transform='none'")):
        with pytest.raises(TfpVaeError, match=message):
            Config(missing_mechanism="self-masking", **settings)
    with pytest.raises(TfpVaeError, match="missing_mechanism must be one of"):
        Config(missing_mechanism="sometimes")


def mnar(rng, n=3000):
    """The linear-Gaussian rows, each value above its column's mean hidden in the first three columns."""
    x, _, _, _ = linear_gaussian(rng, n=n, missing=0.0)
    hidden = np.zeros_like(x, bool)
    hidden[:, :3] = x[:, :3] > x[:, :3].mean(axis=0)
    return x, hidden, np.where(hidden, np.nan, x).astype(np.float32)


@pytest.mark.slow
def test_self_masking_fills_values_missing_because_they_are_large_far_better(rng):
    x, hidden, gappy = mnar(rng)
    errors = {}
    for mechanism in ("at-random", "self-masking", "self-masking-high"):
        model = GaussianVAE(6, code_size=2, hidden=(), decoder_scale="shared", allow_missing=True, seed=0,
                            missing_mechanism=mechanism)
        model.compile(tf_keras.optimizers.Adam(1e-2))
        model.fit(gappy, epochs=40, batch_size=64, verbose=0)
        filled, _ = model.impute(gappy[:1000])
        errors[mechanism] = np.sqrt(np.mean((filled - x[:1000])[hidden[:1000]] ** 2))
        if mechanism == "self-masking":
            assert (model.missingness.slope.numpy()[:3] > 0).all()  # learned: larger values go missing
    assert errors["self-masking"] < 0.75 * errors["at-random"], errors
    assert errors["self-masking-high"] < 0.75 * errors["at-random"], errors


@pytest.mark.parametrize("mechanism", ["self-masking", "self-masking-low"])
def test_a_self_masking_model_saves_exports_and_fills_deterministically(rng, tmp_path, mechanism):
    _, hidden, gappy = mnar(rng, n=300)
    model = GaussianVAE(6, code_size=2, hidden=(), decoder_scale="shared", allow_missing=True,
                        missing_mechanism=mechanism, seed=0)
    model.compile(tf_keras.optimizers.Adam(1e-2))
    model.fit(gappy, epochs=10, batch_size=64, verbose=0)
    filled, stddev, draws = model.impute(gappy[:20], draws=3, seed=1)
    seen = ~np.isnan(gappy[:20])
    np.testing.assert_array_equal(filled[seen], gappy[:20][seen])
    np.testing.assert_array_equal(draws[:, seen], np.broadcast_to(gappy[:20][seen], (3, seen.sum())))
    # The spread of the weighted draws: 0 only where one draw takes all the weight.
    assert np.isfinite(draws).all() and np.mean(stddev[~seen] > 0) > 0.9
    np.testing.assert_array_equal(model.impute(gappy[:20], draws=3, seed=1)[2], draws)
    # Each row resamples draws of its own: copies of a row, resampling 3 draws, shared one's cells a third of the time.
    copies = np.repeat(gappy[np.isnan(gappy).any(axis=1)][:1], 40, axis=0)
    drawn = model.impute(copies, draws=5, num_samples=3, seed=1)[2][:, :, np.isnan(copies[0]).argmax()]
    assert all(len(np.unique(draw)) == len(copies) for draw in drawn)
    model.save(tmp_path / "model.keras")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras")
    assert loaded.missing_mechanism == mechanism and loaded.missingness.direction == model.missingness.direction
    np.testing.assert_array_equal(loaded.missingness.slope.numpy(), model.missingness.slope.numpy())
    np.testing.assert_allclose(loaded.elbo(gappy[:20]).numpy(), model.elbo(gappy[:20]).numpy(), rtol=1e-6)
    served = tf.saved_model.load(export_saved_model(model, tmp_path / "exports"))
    out = served.signatures["impute"](x=tf.constant(gappy[:20]))
    np.testing.assert_allclose(out["x"].numpy(), model.imputation(tf.constant(gappy[:20]))[0].numpy(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.own_process
def test_the_command_line_trains_a_self_masking_model_and_fills_with_it(rng, tmp_path, capsys):
    from tfp_vae import read_candidates
    from tfp_vae.cli import main
    _, _, gappy = mnar(rng, n=300)
    path = tmp_path / "gappy.csv"
    path.write_text("a,b,c,d,e,f\n" + "".join(",".join("" if np.isnan(v) else f"{v:.5g}" for v in row) + "\n"
                                               for row in gappy))
    assert main(["train", str(path), "--out", str(tmp_path / "refused"), "--missing-mechanism", "self-masking"]) == 2
    assert "--missing-mechanism self-masking models why cells are missing: it needs --allow-missing" in \
        capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--allow-missing", "--missing-mechanism",
                 "self-masking", "--epochs", "2", "--quiet"]) == 0
    table = read_candidates(tmp_path / "run")
    assert [row["name"] for row in table] == ["standardize-linear-shared-k6"]  # the direction learned: no network,
    # Student-t, whitening or transform; and chosen by likelihood: cells hidden at random are not missing as these are
    assert "validation_fill_rmse" not in table[0]
    assert main(["impute", str(tmp_path / "run"), str(path), "--out", str(tmp_path / "filled.csv")]) == 0
    assert np.isfinite(np.loadtxt(tmp_path / "filled.csv", delimiter=",", skiprows=1)).all()
