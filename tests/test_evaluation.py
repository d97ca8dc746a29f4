import math

import numpy as np
import pytest

from tfp_vae import GaussianVAE
from tfp_vae._keras import tf_keras
from tfp_vae.evaluation import PIT_BINS, calibration_counts, evaluate, leave_one_out, log_likelihood, normalised_rmse

from ppca import ppca_log_likelihood


def test_coverage_is_exact_for_data_drawn_from_the_predicted_gaussian(rng):
    mean, stddev = rng.normal(size=(20000, 3)) * 100, rng.uniform(0.01, 50, size=(20000, 3))
    x = mean + stddev * rng.normal(size=mean.shape)
    counts = calibration_counts(x, mean, stddev) / x.size
    assert counts[0] == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.01)
    assert counts[1] == pytest.approx(math.erf(2 / math.sqrt(2)), abs=0.005)
    np.testing.assert_allclose(counts[2:], 1 / PIT_BINS, atol=0.01)


def test_leave_one_out_hides_each_observed_cell_of_rows_that_keep_another():
    nan = np.nan
    rows = np.array([[1.0, 2.0, nan], [nan, 5.0, nan], [7.0, 8.0, 9.0]])
    gappy, truth, source = leave_one_out(rows, max_cells=10)
    expected = np.array([[nan, 2.0, nan], [1.0, nan, nan],  # the row with one observed cell keeps it
                         [nan, 8.0, 9.0], [7.0, nan, 9.0], [7.0, 8.0, nan]])
    np.testing.assert_array_equal(gappy, expected)
    np.testing.assert_array_equal(truth, rows[[0, 0, 2, 2, 2]])
    np.testing.assert_array_equal(source, [0, 0, 2, 2, 2])
    few, few_truth, few_source = leave_one_out(rows, max_cells=3, seed=1)
    np.testing.assert_array_equal(few_truth, rows[few_source])
    assert len(few) == 3 and (np.isnan(few).sum(axis=1) - np.isnan(few_truth).sum(axis=1) == 1).all()


def test_normalised_rmse_is_over_the_hidden_cells_in_each_columns_units():
    truth = np.array([[1.0, 10.0], [2.0, 20.0]])
    filled = np.array([[1.5, 10.0], [2.0, 0.0]])
    hidden = np.array([[True, False], [False, True]])
    # errors 0.5 / 0.5 = 1 and -20 / 10 = -2: sqrt((1 + 4) / 2)
    assert normalised_rmse(filled, truth, hidden, np.array([0.5, 10.0])) == pytest.approx(math.sqrt(2.5))


@pytest.mark.slow
def test_iwae_tightens_towards_the_exact_ppca_likelihood(rng):
    d, k = 5, 2
    data = (rng.normal(size=(3000, k)) @ (rng.normal(size=(k, d)) * 3) + 0.5 * rng.normal(size=(3000, d))
            + 20.0).astype(np.float32)
    train, test = data[:2500], data[2500:]
    model = GaussianVAE(d, code_size=k, hidden=(), decoder_scale="shared", seed=0)
    model.compile(tf_keras.optimizers.Adam(0.02))
    model.fit(train, epochs=40, batch_size=250, verbose=0)
    exact = ppca_log_likelihood(train.astype(np.float64), test.astype(np.float64), k)
    one, many = (log_likelihood(model, test, num_samples=s)["log_likelihood"].mean() for s in (1, 500))
    assert one < many  # more importance samples tighten the bound
    assert abs(many - exact) / d < 0.02
    metrics = evaluate(model, test, num_samples=200)
    assert metrics["n"] == 500 and metrics["active_units"] == k
    assert metrics["elbo"] <= metrics["log_likelihood"] + 1e-6
    assert metrics["bits_per_feature"] == pytest.approx(-metrics["log_likelihood"] / (d * math.log(2)))


def test_iwae_over_many_chunks_of_draws_equals_one_chunk(mixed_scale_data):
    model = GaussianVAE(5, hidden=(8,), decoder_scale="full", seed=0)
    model.compile()
    model.fit(mixed_scale_data, epochs=2, batch_size=100, verbose=0)
    x = mixed_scale_data[:40]
    one = log_likelihood(model, x, num_samples=64, rows_per_chunk=40)
    many = log_likelihood(model, x, num_samples=64, rows_per_chunk=40, cells_per_chunk=40 * 25 * 3)  # 22 chunks
    for name in one:
        np.testing.assert_allclose(many[name], one[name], rtol=1e-5)
    assert np.all(one["elbo"] <= one["log_likelihood"])


def test_figures_stay_finite_for_values_near_float32s_limit(rng):
    x = (rng.normal(size=(64, 3)) * 1e37 + 1e37).astype(np.float32)
    model = GaussianVAE(3, hidden=(4,), seed=0)
    model.adapt(x)
    metrics = evaluate(model, x, num_samples=4)
    assert np.isfinite(metrics["mse"]) and metrics["mse"] > 1e70
