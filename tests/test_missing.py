"""Missing values: reading them, training on the observed cells, scoring and filling gaps (MIWAE)."""

import csv
import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import Config, GaussianVAE, data, evaluate, export_saved_model, load_imputer, load_run, \
    read_candidates, runs, select, train
from tfp_vae import model as model_module
from tfp_vae.blend import FillBlend
from tfp_vae._keras import tf_keras
from tfp_vae.cli import main
from tfp_vae.data import RunningMoments, read_table
from tfp_vae.errors import DataError, TfpVaeError
from tfp_vae.evaluation import fill_errors, leave_one_out, log_likelihood
from tfp_vae.gaps import em_gaussian
from tfp_vae.model import DRAW_NUMBERS, IMPUTE_ROWS
from tfp_vae.neighbours import NAME, NeighbourFill
from tfp_vae.pipeline import clean_line, in_validation


def test_missing_tokens_are_read_as_nan_only_when_allowed(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,c\n1,NA,3\n n/a ,2,null\nNaN,,6\n4,5,6\n")
    with pytest.raises(DataError, match="line 2, column 'b'; fix it; pass allow_missing=True"):
        read_table(str(path))
    values = read_table(str(path), allow_missing=True).values
    np.testing.assert_array_equal(np.isnan(values), [[0, 1, 0], [1, 0, 1], [1, 1, 0], [0, 0, 0]])
    (tmp_path / "inf.csv").write_text("a,b\n1,inf\n")
    with pytest.raises(DataError, match="infinite value inf at line 2, column 'b'; fix it$"):
        read_table(str(tmp_path / "inf.csv"), allow_missing=True)
    assert clean_line(tf.constant("NA,1,N/A,null,x")).numpy() == b",1,,,x"  # the streaming reader agrees


def test_moments_are_over_each_columns_observed_cells(rng):
    x = rng.normal(size=(500, 3)) * [1.0, 10.0, 0.1]
    running = RunningMoments()
    complete = RunningMoments()
    gappy = np.where(rng.random(x.shape) < 0.3, np.nan, x)
    for start in range(0, 500, 128):
        running.update(gappy[start:start + 128])
        complete.update(x[start:start + 128])
    np.testing.assert_allclose(running.mean, np.nanmean(gappy, axis=0), rtol=1e-12)
    np.testing.assert_allclose(running.stddev, np.nanstd(gappy, axis=0), rtol=1e-12)
    np.testing.assert_array_equal(running.observed, np.isfinite(gappy).sum(axis=0))
    np.testing.assert_allclose(complete.stddev, x.std(axis=0), rtol=1e-12)


def linear_gaussian(rng, n=3000, missing=0.3):
    d, k = 6, 2
    loadings = rng.normal(size=(k, d))
    noise = np.array([0.5, 0.3, 0.8, 0.4, 0.6, 0.5])
    x = rng.normal(size=(n, k)) @ loadings + noise * rng.normal(size=(n, d)) + 3.0
    gappy = np.where(rng.random(x.shape) < missing, np.nan, x)
    return x, gappy, np.full(d, 3.0), loadings.T @ loadings + np.diag(noise**2)


def conditional_means(rows, mean, covariance):
    """E[x_missing | x_observed] under the true Gaussian, row by row (NaN where nothing is missing)."""
    filled = np.array(rows, np.float64)
    for row in filled:
        seen = ~np.isnan(row)
        if seen.all() or not seen.any():
            continue
        row[~seen] = mean[~seen] + covariance[np.ix_(~seen, seen)] @ np.linalg.solve(
            covariance[np.ix_(seen, seen)], row[seen] - mean[seen])
    return filled


@pytest.mark.slow
def test_linear_vae_learns_the_observed_data_likelihood_and_fills_like_the_true_conditional(rng):
    """30% of cells missing at random: within 0.05 nats per observed cell of the true Gaussian's marginal
    likelihood, and fills nearly as close to the hidden values as the true conditional means."""
    x, gappy, mean, covariance = linear_gaussian(rng)
    model = GaussianVAE(6, code_size=2, hidden=(), decoder_scale="shared", allow_missing=True, seed=0)
    model.compile(tf_keras.optimizers.Adam(1e-2))
    model.fit(gappy[:2400].astype(np.float32), epochs=150, batch_size=64, verbose=0)
    test, hidden = gappy[2400:], x[2400:]
    truth = [gaussian_marginal(row, mean, covariance) for row in test]
    held_out = evaluate(model, test.astype(np.float32), num_samples=200)["log_likelihood"]
    observed_per_row = np.isfinite(test).sum() / len(test)
    assert (np.mean(truth) - held_out) / observed_per_row < 0.05, (np.mean(truth), held_out)
    filled, stddev = model.impute(test.astype(np.float32))
    gaps = np.isnan(test)
    model_error = np.sqrt(np.mean((filled[gaps] - hidden[gaps]) ** 2))
    oracle_error = np.sqrt(np.mean((conditional_means(test, mean, covariance)[gaps] - hidden[gaps]) ** 2))
    column_mean_error = np.sqrt(np.mean((np.nanmean(gappy[:2400], axis=0)[np.nonzero(gaps)[1]] - hidden[gaps]) ** 2))
    assert model_error < 1.1 * oracle_error < column_mean_error, (model_error, oracle_error, column_mean_error)
    assert 0.6 < np.mean(np.abs(filled[gaps] - hidden[gaps]) <= stddev[gaps]) < 0.76  # a calibrated 68%


@pytest.mark.slow
@pytest.mark.parametrize("decoder", [dict(decoder_scale="shared", hidden=()), dict(decoder_scale="full", hidden=(16,))],
                         ids=["linear floor", "full covariance"])
def test_whitened_models_score_the_observed_cells_marginal_and_fill_by_the_conditional(rng, decoder):
    """Whitening fitted by EM, each row scored by its observed cells' Gaussian marginal: the linear floor is
    the true model's family, within 0.02 nats per observed cell of its marginal likelihood; fills within 5% of
    the true conditional means' error."""
    x, gappy, mean, covariance = linear_gaussian(rng)
    model = GaussianVAE(6, code_size=2, normalization="whiten", allow_missing=True, seed=0, **decoder)
    model.compile()
    model.fit(gappy[:2400].astype(np.float32), epochs=30, batch_size=64, verbose=0)
    test, hidden = gappy[2400:], x[2400:]
    truth = np.mean([gaussian_marginal(row, mean, covariance) for row in test])
    held_out = evaluate(model, test.astype(np.float32), num_samples=200)["log_likelihood"]
    assert (truth - held_out) / (np.isfinite(test).sum() / len(test)) < 0.02, (truth, held_out)
    filled, stddev, draws = model.impute(test.astype(np.float32), draws=20)
    gaps = np.isnan(test)
    model_error = np.sqrt(np.mean((filled[gaps] - hidden[gaps]) ** 2))
    oracle_error = np.sqrt(np.mean((conditional_means(test, mean, covariance)[gaps] - hidden[gaps]) ** 2))
    assert model_error < 1.05 * oracle_error, (model_error, oracle_error)
    assert 0.6 < np.mean(np.abs(filled[gaps] - hidden[gaps]) <= stddev[gaps]) < 0.76  # a calibrated 68%
    np.testing.assert_allclose(draws.std(axis=0)[gaps].mean(), stddev[gaps].mean(), rtol=0.15)
    np.testing.assert_array_equal(draws[:, ~gaps], np.broadcast_to(test[~gaps].astype(np.float32), (20, (~gaps).sum())))


def gaussian_marginal(row, mean, covariance) -> float:
    """log N(x_o; mean_o, covariance_oo) of a row's observed cells."""
    seen = ~np.isnan(row)
    centred, block = row[seen] - mean[seen], covariance[np.ix_(seen, seen)]
    return -0.5 * (seen.sum() * np.log(2 * np.pi) + np.linalg.slogdet(block)[1] + centred @ np.linalg.solve(block, centred))


@pytest.mark.parametrize("em_prior_rows", [1.0, 0.0])
def test_an_untrained_linear_model_is_the_gaussian_em_fits(rng, em_prior_rows):
    """`to_gaussian`: scores are the EM Gaussian's marginals (under the model's prior) and fills its conditional
    means and spreads, exactly."""
    _, gappy, _, _ = linear_gaussian(rng, n=500)
    rows = gappy.astype(np.float32)
    model = GaussianVAE(6, code_size=2, hidden=(), decoder_scale="shared", normalization="whiten",
                        allow_missing=True, seed=0, em_prior_rows=em_prior_rows).adapt(rows).to_gaussian()
    mean, covariance = em_gaussian(rows, em_prior_rows)
    assert model.is_closed_form and model.draws_for(1000) == 1  # every draw gives the same: one is made
    np.testing.assert_allclose(log_likelihood(model, rows[:40], num_samples=5)["log_likelihood"],
                               [gaussian_marginal(row, mean, covariance) for row in rows[:40]], atol=1e-4)
    filled, stddev = model.impute(rows[:40], num_samples=3)
    gaps = np.isnan(rows[:40])
    np.testing.assert_allclose(filled[gaps], conditional_means(rows[:40], mean, covariance)[gaps], rtol=1e-4)
    spreads = [np.sqrt(np.diag(covariance[np.ix_(~seen, ~seen)] - covariance[np.ix_(~seen, seen)] @ np.linalg.solve(
        covariance[np.ix_(seen, seen)], covariance[np.ix_(seen, ~seen)]))) for seen in ~gaps]
    np.testing.assert_allclose(stddev[gaps], np.concatenate(spreads), rtol=1e-4)
    model.compile()
    model.fit(rows, epochs=1, batch_size=100, verbose=0)
    assert not model.is_closed_form and model.draws_for(1000) == 1000


def test_a_constant_column_with_gaps_is_scored_alike_and_filled_with_its_constant(rng):
    """EM's ridge gave a constant column a variance of its own when whitening (a scale of 6.8e-4 here, not 5.0's
    float32 resolution, 6e-7): its fills spread around 5 by 1e-4, and it scored 7 nats per row below the
    standardised candidates'."""
    _, gappy, _, _ = linear_gaussian(rng, n=300)
    gappy[:, 1] = np.where(np.isnan(gappy[:, 1]), np.nan, 5.0)
    rows = gappy.astype(np.float32)
    with pytest.warns(UserWarning, match=r"constant column\(s\) 1 \(to"):
        models = [GaussianVAE(6, code_size=2, hidden=(), decoder_scale="shared", normalization=normalization,
                              allow_missing=True, seed=0).adapt(rows) for normalization in ("whiten", "standardize")]
    scales = [model.normalizer.scale.numpy()[1] for model in models]
    assert scales[0] == scales[1] == np.float32(5.0 * np.finfo(np.float32).eps)
    model = models[0]
    model.compile()
    model.fit(rows, epochs=2, batch_size=100, verbose=0)
    filled, _ = model.impute(rows)
    np.testing.assert_allclose(filled[:, 1], 5.0, rtol=2 * np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def gappy_model():
    _, gappy, _, _ = linear_gaussian(np.random.default_rng(7), n=600)
    model = GaussianVAE(6, code_size=2, hidden=(8,), allow_missing=True, seed=0)
    model.compile()
    model.fit(gappy.astype(np.float32), epochs=2, batch_size=100, verbose=0)
    return model, gappy.astype(np.float32)


def test_filling_keeps_observed_cells_and_is_deterministic(gappy_model):
    model, gappy = gappy_model
    rows = gappy[:50]
    filled, stddev, draws = model.impute(rows, draws=4, num_samples=100, seed=3)
    seen = ~np.isnan(rows)
    np.testing.assert_array_equal(filled[seen], rows[seen])
    assert np.all(stddev[seen] == 0) and np.all(stddev[~seen] > 0) and np.isfinite(filled).all()
    assert draws.shape == (4, 50, 6) and np.isfinite(draws).all()
    np.testing.assert_array_equal(draws[:, seen], np.broadcast_to(rows[seen], (4, seen.sum())))
    assert np.std(draws[:, ~seen], axis=0).min() > 0  # draws, not copies of the mean
    again = model.impute(rows, draws=4, num_samples=100, seed=3)
    np.testing.assert_array_equal(again[0], filled)
    np.testing.assert_array_equal(again[2], draws)
    # A row's draws are the same whatever the length of its table (the last batch is padded to one traced shape).
    fewer = model.impute(rows[:7], draws=4, num_samples=100, seed=3)
    np.testing.assert_array_equal(fewer[0], filled[:7])
    np.testing.assert_array_equal(fewer[2], draws[:, :7])
    # Its fill is the same whatever its place and batch: every row is weighted over the same draws of the noise.
    order = np.random.default_rng(0).permutation(50)
    shuffled = model.impute(rows[order], num_samples=100, seed=3, batch_size=16)[0]
    np.testing.assert_allclose(shuffled, filled[order], rtol=1e-5, atol=1e-5)
    assert not np.allclose(model.impute(rows, num_samples=100, seed=4)[0], filled, rtol=1e-3, atol=0)


def test_scores_are_of_the_observed_cells(gappy_model):
    model, gappy = gappy_model
    row = gappy[:1].copy()
    row[0, :] = np.arange(6.0)
    fewer = row.copy()
    fewer[0, 3:] = np.nan
    assert np.isfinite(model.elbo(fewer).numpy()).all()
    assert float(model.score(np.full((1, 6), np.nan, np.float32))["reconstruction_log_prob"][0]) == 0.0
    assert np.isfinite(evaluate(model, gappy[:100], num_samples=10)["log_likelihood"])


def test_complete_data_trains_to_exactly_the_same_weights(rng):
    x = (rng.normal(size=(300, 4)) * [1.0, 5.0, 0.1, 2.0]).astype(np.float32)
    weights = []
    for allow_missing in (False, True):
        model = GaussianVAE(4, code_size=2, hidden=(8,), allow_missing=allow_missing, seed=0)
        model.compile()
        model.fit(x, epochs=2, batch_size=50, verbose=0, shuffle=False)
        weights.append(model.get_weights())
    for before, after in zip(*weights):
        np.testing.assert_array_equal(before, after)


def test_steps_that_factor_a_covariance_per_row_are_not_compiled_by_xla(monkeypatch):
    monkeypatch.setattr(model_module, "xla_has_room", lambda: True)  # however many models this process has compiled
    jit = {(normalization, allow_missing): GaussianVAE(3, normalization=normalization, allow_missing=allow_missing)
           for normalization in ("standardize", "whiten") for allow_missing in (False, True)}
    for model in jit.values():
        model.compile()
    assert {key: model.jit_compile for key, model in jit.items()} == {
        ("standardize", False): True, ("standardize", True): True, ("whiten", False): True, ("whiten", True): False}


def test_filling_wide_rows_bounds_the_numbers_its_draws_take():
    """A whitened model with gaps factors a D x D covariance per row and draw: at D = 64, 64 rows of 1,000 draws
    took 18 GB; its batches shrink so that each tensor stays within DRAW_NUMBERS (measured: 1.1 GB in all)."""
    whitened = GaussianVAE(64, normalization="whiten", allow_missing=True)
    standardised = GaussianVAE(64, normalization="standardize", allow_missing=True)
    assert (whitened.chunk_width, standardised.chunk_width) == (64 * 64, 64)
    assert DRAW_NUMBERS // (1000 * 64 * 64) == 0 and whitened.rows_per_batch(1000, IMPUTE_ROWS) == 1
    assert whitened.rows_per_batch(100, IMPUTE_ROWS) == DRAW_NUMBERS // (100 * 64 * 64) == 9
    assert standardised.rows_per_batch(1000, IMPUTE_ROWS) == 62 and standardised.rows_per_batch(10, 64) == 64


def test_a_fill_past_float32_is_inf_and_the_command_line_refuses_it(tmp_path, capsys):
    """Under the log transform, an observed value at float32's edge sends another column's fill past its range (an
    exponent): inf with an inf stddev, never NaN; `tfp-vae impute` names the data row and column and writes
    nothing."""
    rng = np.random.default_rng(5)
    x = np.exp(rng.normal(size=(600, 1)) @ [[1.0, 1.0, 3.0]] + 0.1 * rng.normal(size=(600, 3)))
    gappy = np.where(rng.random(x.shape) < 0.2, np.nan, x).astype(np.float32)
    model = GaussianVAE(3, code_size=1, hidden=(8,), transform="log", allow_missing=True, seed=0)
    model.compile()
    model.fit(gappy, epochs=20, batch_size=100, verbose=0)
    rows = np.array([[1.0, np.nan, 2.0], [3e38, np.nan, np.nan]], np.float32)
    filled, stddev, draws = model.impute(rows, draws=3)
    assert not np.isnan(filled).any() and not np.isnan(stddev).any() and not np.isnan(draws).any()
    assert np.isinf(filled[1]).any() and np.all(stddev[np.isinf(filled)] == np.inf) and np.isfinite(filled[0]).all()
    run = tmp_path / "run"
    run.mkdir()
    runs.save_config(Config(hidden=(8,), code_size=1, transform="log", allow_missing=True, select="none",
                            input_size=3, feature_names=["a", "b", "c"]), str(run))
    model.save(run / "model.keras")
    path = tmp_path / "hostile.csv"
    path.write_text("a,b,c\n1,NA,2\n3e38,NA,NA\n")
    assert main(["impute", str(run), str(path), "--out", str(tmp_path / "filled.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    column = "abc"[np.flatnonzero(np.isinf(filled[1]))[0]]
    assert len(err) == 1 and f"hostile.csv: data row 2, column '{column}': the fill passes float32's range" in err[0]
    assert not (tmp_path / "filled.csv").exists()


def test_an_observed_value_far_past_the_training_rows_scores_minus_inf_and_fills_without_nan(rng):
    """Standardised 1e30 overflows the network's terms (inf / inf in the Gaussian): the row scores -inf, and its
    draws, weighing nothing, still mix and resample, where they made NaN and an out-of-range gather before."""
    x = rng.normal(size=(300, 3)) @ [[1.0, 0.5, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]
    gappy = np.where(rng.random(x.shape) < 0.2, np.nan, x).astype(np.float32)
    model = GaussianVAE(3, code_size=1, hidden=(8,), allow_missing=True, seed=0)
    model.compile()
    model.fit(gappy, epochs=1, batch_size=100, verbose=0)
    rows = np.array([[1.0, np.nan, 2.0], [1e30, np.nan, np.nan]], np.float32)
    elbo = model.elbo(rows).numpy()
    assert np.isfinite(elbo[0]) and elbo[1] == -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no inf - inf on the way
        metrics = evaluate(model, rows, num_samples=10)
    assert metrics["log_likelihood"] == -np.inf and metrics["log_likelihood_stderr"] == np.inf
    assert not any(np.isnan(value).any() for value in metrics.values())
    filled, stddev, draws = model.impute(rows, draws=3)
    assert not np.isnan(filled).any() and not np.isnan(stddev).any() and not np.isnan(draws).any()


@pytest.fixture
def tiny_gappy_run(rng, tmp_path):
    """A run folder of a two-column model trained with gaps allowed, for the command line."""
    model = GaussianVAE(2, code_size=1, hidden=(4,), allow_missing=True, seed=0)
    model.compile()
    model.fit(rng.normal(size=(100, 2)).astype(np.float32), epochs=1, verbose=0)
    run = tmp_path / "run"
    run.mkdir()
    runs.save_config(Config(hidden=(4,), code_size=1, allow_missing=True, select="none", input_size=2,
                            feature_names=["a", "b"]), str(run))
    model.save(run / "model.keras")
    return run


def test_impute_copies_a_csvs_comment_lines_header_and_observed_text(tiny_gappy_run, tmp_path):
    path = tmp_path / "gappy.csv"
    path.write_text("# Data source: unit 4\na,b\n1.50,NA\n2,3e0\n")
    assert main(["impute", str(tiny_gappy_run), str(path), "--out", str(tmp_path / "filled.csv")]) == 0
    lines = (tmp_path / "filled.csv").read_text().splitlines()
    assert lines[:3] == ["# Data source: unit 4", "a,b", "1.50," + lines[2].split(",")[1]] and lines[3] == "2,3e0"
    assert np.isfinite(float(lines[2].split(",")[1]))


def test_rows_with_no_observed_cell_are_named_by_impute_and_score_and_counted_by_evaluate(tiny_gappy_run, tmp_path,
                                                                                          capsys):
    path = tmp_path / "gappy.csv"
    path.write_text("a,b\n1,NA\nNA,NA\n2,3\nNA,\n")
    empty = "gappy.csv: 2 row(s) have no observed cell (the first: data row 2)"
    assert main(["impute", str(tiny_gappy_run), str(path), "--out", str(tmp_path / "filled.csv")]) == 0
    assert empty in capsys.readouterr().err
    assert np.isfinite(np.loadtxt(tmp_path / "filled.csv", delimiter=",", skiprows=1)).all()
    assert main(["score", str(tiny_gappy_run), str(path), "--out", str(tmp_path / "scores.csv")]) == 0
    assert empty in capsys.readouterr().err
    assert main(["evaluate", str(tiny_gappy_run), str(path), "--samples", "4"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n"] == 2 and "dropped 2 row(s) with no observed cell; the figures are over the other 2" \
        in err


def test_a_table_rewritten_while_it_is_filled_is_refused_and_nothing_is_written(tiny_gappy_run, tmp_path, capsys,
                                                                                monkeypatch):
    """`impute` reads a CSV's text a second time to copy it: if its rows changed meanwhile, one error line."""
    path = tmp_path / "gappy.csv"
    path.write_text("a,b\n1,NA\n2,3\nNA,4\n")
    rows_as_read = data.csv_data_rows

    def shorter(pattern):
        yield from list(rows_as_read(pattern))[:-1]
    monkeypatch.setattr(data, "csv_data_rows", shorter)
    assert main(["impute", str(tiny_gappy_run), str(path), "--out", str(tmp_path / "filled.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gappy.csv: its rows changed while they were being filled" in err[0], err
    assert not (tmp_path / "filled.csv").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gappy.csv", "run"]


def test_rows_with_no_observed_cell_are_skipped_with_a_warning_at_the_users_line(rng, tmp_path):
    x = rng.normal(size=(60, 3)).astype(np.float32)
    x[[4, 9]] = np.nan
    with pytest.warns(UserWarning, match=r"dropped 2 row\(s\) with no observed cell") as caught:
        train(Config(allow_missing=True, select="none", epochs=1, hidden=(4,), code_size=1), x, tmp_path / "run",
              verbose=0)
    assert caught[0].filename == __file__  # not a line inside tfp_vae's training


def test_what_cannot_leave_cells_out_is_refused(rng):
    for settings, message in ((dict(normalization="whiten", decoder_scale="optimal"), "sigma-VAE cannot fit"),
                              (dict(normalization="whiten", nll_beta=0.5), "nll_beta weighs each feature's own term"),
                              (dict(model="question"), "question's model cannot leave cells out")):
        with pytest.raises(TfpVaeError, match=message):
            Config(allow_missing=True, **settings)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    x[1:, 2] = np.nan
    with pytest.raises(DataError, match="column 2 has 1 observed value"):
        GaussianVAE(3, allow_missing=True).adapt(x)
    with pytest.raises(TfpVaeError, match="train it with allow_missing=True"):
        GaussianVAE(3).impute(rng.normal(size=(2, 3)))
    with pytest.raises(DataError, match="none of its 2 rows has an observed cell"):
        train(Config(allow_missing=True), np.full((2, 3), np.nan, np.float32), "never-written")


def test_a_column_with_too_few_observed_values_is_one_error_line_and_leaves_no_run(tmp_path, capsys):
    path = tmp_path / "gone.csv"
    path.write_text("a,b\n" + "".join(f"{i},{'7' if i == 3 else 'NA'}\n" for i in range(40)))
    (tmp_path / "empty").mkdir()
    for out in ("new", "empty"):  # selection writes its config and candidates before the column is found out
        assert main(["train", str(path), "--out", str(tmp_path / out), "--allow-missing", "--epochs", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "gone.csv: column 1 'b' has 1 observed value(s) in the training rows" in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["empty", "gone.csv"] and os.listdir(tmp_path / "empty") == []


@pytest.mark.own_process
def test_selection_and_the_command_line_with_gaps(tmp_path, capsys, monkeypatch):
    _, gappy, _, _ = linear_gaussian(np.random.default_rng(2), n=400)
    gappy[5] = np.nan  # a row with nothing observed
    path = tmp_path / "gappy.csv"
    lines = ["a,b,c,d,e,f"] + [",".join("NA" if np.isnan(v) else f"{v:.5g}" for v in row) for row in gappy]
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--allow-missing", "--epochs", "2",
                 "--hidden", "8", "--quiet"]) == 0
    assert ": fills of validation cells " in capsys.readouterr().out
    table = read_candidates(tmp_path / "run")
    assert {"whiten-8-shared-k6", "yeo_johnson-whiten-8-full-k6", "standardize-8-student_t-k6"} <= {
        row["name"] for row in table}
    # Chosen by its fills of validation cells, each hidden in turn, not by likelihood: the simplest candidate within
    # one standard error of the best, the squared errors grouped by the row each cell came from. Under 400 rows,
    # over four folds: each candidate fitted four times, each row a validation row once.
    config, _ = load_run(tmp_path / "run")
    rows = read_table(str(path), allow_missing=True).values
    rows = rows[~np.isnan(rows).all(axis=1)]  # skipped, as training skips them
    assert (len(rows), config.selection_folds) == (399, 4)
    scale = np.nanstd(rows[~in_validation(np.arange(len(rows)), 0.25, config.seed)].astype(np.float64), axis=0)
    # The last row is no model: the nearest training rows' fills, a blend member alone.
    assert table[-1]["name"] == NAME and table[-1]["validation_log_likelihood"] == "nan"
    errors, sources, first_row = [[] for _ in table], [], 0
    for fold in range(4):
        held_out = in_validation(np.arange(len(rows)), 0.25, config.seed, fold)
        gappy_cells, truth, source = leave_one_out(rows[held_out], select.FILL_CELLS, config.seed)
        sources.append(source + first_row)  # the validation rows numbered across the folds
        first_row += held_out.sum()
        for number, row in enumerate(table[:-1]):
            _, candidate = load_run(runs.candidate_folder(tmp_path / "run", row["name"], fold))
            errors[number].append(fill_errors(candidate, gappy_cells, truth, scale, seed=config.seed))
        errors[-1].append(fill_errors(NeighbourFill(rows[~held_out]), gappy_cells, truth, scale))
    errors, source = [np.concatenate(error) for error in errors], np.concatenate(sources)
    np.testing.assert_allclose([np.sqrt(np.mean(error**2)) for error in errors],
                               [float(row["validation_fill_rmse"]) for row in table], rtol=1e-4)
    index = select.simplest_within_one_se([error**2 for error in errors[:-1]], source)
    assert [row["chosen"] for row in table] == [str(number == index) for number in range(len(table))]
    # The run fills with the blend of candidates the same figures call for (or the chosen one alone).
    members = np.append(select.blend_members([row["transform"] for row in table[:-1]], index), True)
    np.testing.assert_allclose([float(row["fill_weight"]) for row in table],
                               select.fill_weights(np.stack(errors, 1), index, source, config.seed, members),
                               atol=1e-3)
    # The chosen candidate and every other one in the fills had a last fit on every row, which fills in their place.
    assert sorted(os.listdir(tmp_path / "run" / "candidates" / "refits")) == sorted(
        row["name"] for number, row in enumerate(table) if number == index or float(row["fill_weight"]) > 0)
    # Made to blend the chosen candidate with the first other one, the run's imputer is that blend, and `impute`
    # and the export fill with it.
    other = next(number for number in range(len(table)) if number != index)
    for number, row in enumerate(table):
        row["fill_weight"] = {index: 0.25, other: 0.75}.get(number, 0.0)
    runs.adopt_candidate(str(tmp_path / "run"), table[index]["name"], table)
    imputer = load_imputer(tmp_path / "run")
    assert isinstance(imputer, FillBlend) and list(imputer.weights) == (
        [0.25, 0.75] if index < other else [0.75, 0.25])
    assert main(["impute", str(tmp_path / "run"), str(path), "--out", str(tmp_path / "filled.csv")]) == 0
    filled = np.loadtxt(tmp_path / "filled.csv", delimiter=",", skiprows=1)
    read = read_table(str(path), allow_missing=True).values
    assert filled.shape == gappy.shape and np.isfinite(filled).all()
    seen = ~np.isnan(read)
    np.testing.assert_array_equal(filled.astype(np.float32)[seen], read[seen])
    np.testing.assert_allclose(filled[~seen], imputer.impute(read)[0][~seen], rtol=1e-5)
    # Identifiers and columns the model does not use stay beside the fills, each cell as it was written.
    labelled, labelled_filled = tmp_path / "labelled.csv", tmp_path / "labelled_filled.csv"
    labelled.write_text("id,a,b,c,d,e,f\n" + "".join(f'"row {i}, kept",{line}\n' for i, line in enumerate(lines[1:4])))
    assert main(["impute", str(tmp_path / "run"), str(labelled), "--out", str(labelled_filled), "--columns",
                 "a,b,c,d,e,f"]) == 0
    before, after = (list(csv.reader(open(name, newline=""))) for name in (labelled, labelled_filled))
    assert after[0] == before[0] and [row[0] for row in after[1:]] == ["row 0, kept", "row 1, kept", "row 2, kept"]
    assert all(cell == was for row, was_row in zip(after, before) for cell, was in zip(row, was_row) if was != "NA")
    np.testing.assert_array_equal(np.array([row[1:] for row in after[1:]], np.float32), imputer.impute(read[:3])[0])
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "exports")]) == 0
    served = tf.saved_model.load(str(tmp_path / "exports" / "1")).signatures["impute"](x=tf.constant(read[:30]))
    np.testing.assert_allclose(served["x"].numpy(), imputer.imputation(tf.constant(read[:30]))[0].numpy(),
                               rtol=1e-5, atol=1e-5)
    assert main(["impute", str(tmp_path / "run"), str(path), "--out", str(tmp_path / "d.npy"), "--draws", "3"]) == 0
    assert np.load(tmp_path / "d.npy").shape == (3, 400, 6)
    capsys.readouterr()
    assert main(["impute", str(tmp_path / "run"), str(path), "--out", str(tmp_path / "d.csv"), "--draws", "3"]) == 2
    assert "use a .npy file" in capsys.readouterr().err
    monkeypatch.setattr("tfp_vae.cli.available_memory", lambda: 2**30)
    assert main(["impute", str(tmp_path / "run"), str(path), "--out", str(tmp_path / "d2.npy"), "--draws",
                 "100000"]) == 2
    assert "--draws 100000 of 400 rows of 6 columns would take about 2.7 GiB" in capsys.readouterr().err
    assert not (tmp_path / "d2.npy").exists()
    assert main(["train", str(path), "--out", str(tmp_path / "refused"), "--quiet"]) == 2
    assert "pass --allow-missing to learn from the observed cells" in capsys.readouterr().err


@pytest.mark.parametrize("normalization", ["standardize", "whiten"])
def test_the_saved_model_fills_gaps_and_scores_incomplete_rows(gappy_model, tmp_path, normalization):
    model, gappy = gappy_model
    if normalization == "whiten":
        model = GaussianVAE(6, code_size=2, hidden=(8,), normalization="whiten", allow_missing=True, seed=0)
        model.compile()
        model.fit(gappy, epochs=2, batch_size=100, verbose=0)
    path = export_saved_model(model, tmp_path / "exports")
    loaded = tf.saved_model.load(path)
    warmup = tf.data.TFRecordDataset(f"{path}/assets.extra/tf_serving_warmup_requests")
    assert sum(b"impute" in record.numpy() for record in warmup) == 1  # warmed up with the rest
    rows = gappy[:20]
    served = loaded.signatures["impute"](x=tf.constant(rows))
    filled, stddev = model.impute(gappy[:100])  # a row fills as in any other batch: the command line's fills
    np.testing.assert_allclose(served["x"].numpy(), filled[:20], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served["stddev"].numpy(), stddev[:20], rtol=1e-4, atol=1e-5)
    seen = ~np.isnan(rows)
    np.testing.assert_array_equal(served["x"].numpy()[seen], rows[seen])
    again = loaded.signatures["impute"](x=tf.constant(rows))["x"].numpy()
    np.testing.assert_array_equal(again, served["x"].numpy())
    score = loaded.signatures["score"](x=tf.constant(rows))
    np.testing.assert_allclose(score["elbo"].numpy(), model.score(rows)["elbo"].numpy(), rtol=1e-5, atol=1e-4)
    assert np.isfinite(score["elbo"].numpy()).all()


def test_the_sigma_vaes_batch_error_counts_observed_cells_only():
    model = GaussianVAE(2, code_size=1, hidden=(), decoder_scale="optimal", allow_missing=True, seed=0)
    u, loc = tf.constant([[1.0, 0.0], [3.0, 2.0]]), tf.zeros([2, 2])
    mask = tf.constant([[1.0, 0.0], [1.0, 1.0]])
    model.likelihood.training_scale(u, loc, None, mask)
    # Running average from 1 with momentum 0.95: feature 0 saw (1 + 9) / 2 = 5, feature 1 saw 4 (one cell).
    np.testing.assert_allclose(model.likelihood.mean_squared_error.numpy(), [0.95 + 0.05 * 5, 0.95 + 0.05 * 4],
                               rtol=1e-6)
