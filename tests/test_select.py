"""Choosing the model from the data: the rules, the candidates, and `train`'s choice by validation likelihood."""

import csv
import dataclasses
import json
import logging
import os

import numpy as np
import pytest

from tfp_vae import Config, evaluate, load_run, read_candidates, runs, select, train, training
from tfp_vae.evaluation import log_likelihood
from tfp_vae.errors import TfpVaeError
from tfp_vae.model import GaussianVAE
from tfp_vae.pipeline import dequantization_noise, in_validation


def test_sizes_are_rules_of_the_row_count():
    assert select.validation_fraction(100) == 0.25 and select.validation_fraction(500) == 0.2
    assert select.validation_fraction(100_000) == 0.1
    assert [select.width(n) for n in (50, 280, 500, 1000, 100_000)] == [16, 32, 64, 128, 128]
    assert select.code_size(3) == 3 and select.code_size(30) == 8
    small = select.sized(Config(batch_size=64), 256)  # 4 steps a pass, 12 passes an epoch
    assert (small.passes_per_epoch, small.epochs, small.kl_warmup_epochs, small.early_stopping_patience) == (
        12, 417, 11, 21)
    large = select.sized(Config(batch_size=64, epochs=7), 64_000)  # 1000 steps an epoch
    assert (large.passes_per_epoch, large.epochs, large.kl_warmup_epochs, large.early_stopping_patience) == (
        1, 7, 1, 10)
    assert select.sized(Config(batch_size=64, epochs=7), 256).passes_per_epoch == 1  # the user's epochs


def test_tables_under_400_rows_are_cross_validated_in_four_folds_and_given_settings_pin_the_split():
    def split_and_folds(rows, **given):
        counted = []
        config = select.held_out(Config(**given), lambda: counted.append(rows) or rows)
        assert counted == ([rows] if "validation_split" not in given else [])  # a given split needs no count
        return config.validation_split, config.selection_folds

    assert split_and_folds(150) == (0.25, 4) and split_and_folds(399) == (0.25, 4)
    assert split_and_folds(400) == (0.25, 1) and split_and_folds(1_000) == (0.1, 1)
    assert split_and_folds(150, validation_split=0.2) == (0.2, 1)
    assert split_and_folds(150, selection_folds=1) == (0.25, 1) and split_and_folds(5_000, selection_folds=5) == (0.2, 5)
    assert split_and_folds(150, validation_split=0.1, selection_folds=3) == (0.1, 3)
    with pytest.raises(TfpVaeError, match="3 validation folds of validation_split 0.4 would overlap"):
        Config(validation_split=0.4, selection_folds=3)
    with pytest.raises(TfpVaeError, match="selection_folds must be at least 1, got 0"):
        Config(selection_folds=0)


def test_cross_validation_scores_each_candidate_on_every_row_with_a_fit_per_fold(rng, tmp_path):
    x = (rng.normal(size=(120, 3)) @ rng.normal(size=(3, 3)) + 5.0).astype(np.float32)
    train(Config(epochs=0, hidden=(), decoder_scale="shared", transform="none", seed=0), x, tmp_path / "run",
          verbose=0)
    table = read_candidates(tmp_path / "run")
    assert [(row["name"], row["validation_rows"]) for row in table] == [
        ("whiten-gaussian", "120"), ("standardize-gaussian", "120")]
    scores = []
    for fold in range(4):
        held = in_validation(np.arange(len(x)), 0.25, 0, fold)
        config, model = load_run(runs.candidate_folder(tmp_path / "run", "whiten-gaussian", fold))
        assert (config.validation_split, config.validation_fold) == (0.25, fold)
        centred = x[held].astype(np.float64) - x[~held].mean(axis=0)  # each fold's Gaussian: the other folds' rows
        covariance = np.cov(x[~held].T, bias=True)
        truth = -0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1]
                        + np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred))
        np.testing.assert_allclose(model.elbo(x[held]).numpy(), truth, atol=1e-4)
        scores.append(truth)
    np.testing.assert_allclose(float(table[0]["validation_log_likelihood"]), np.concatenate(scores).mean(), atol=1e-4)
    assert runs.load_config(tmp_path / "run").selection_folds == 4


@pytest.mark.own_process  # TensorFlow stops warning of a function's retracing after a few warnings per process
def test_scoring_many_models_and_fitting_the_candidates_give_no_retracing_warning(rng, tmp_path, caplog):
    # Each model traces its own graphs once. TensorFlow counts traces by a function's code, which every model's
    # scoring closure shared (now a partial of its own) and Keras's training step shares (filtered while choosing).
    x = rng.normal(size=(120, 3)).astype(np.float32)
    x[:, 1:][rng.random((120, 2)) < 0.2] = np.nan
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for seed in range(8):
            model = GaussianVAE(3, code_size=2, hidden=(4,), allow_missing=True, seed=seed).adapt(x)
            assert np.isfinite(log_likelihood(model, x[:10], 10)["log_likelihood"]).all()
        train(Config(epochs=1, hidden=(4,), decoder_scale="learned", transform="none", allow_missing=True, seed=0),
              x, tmp_path / "run", verbose=0)
    # Standardised and whitened, four folds each, and a last fit; then the nearest rows, a blend member.
    assert [row["name"] for row in read_candidates(tmp_path / "run")][2:] == ["neighbours-k5"]
    assert not [record.getMessage() for record in caplog.records if "retracing" in record.getMessage()]


def test_the_last_fit_trains_on_every_row_for_the_best_epochs_steps():
    candidate = select.sized(Config(batch_size=64, validation_split=0.2, select="none"), 256)  # 12 passes an epoch
    last = select.refit(candidate, [[5.0, 3.0, float("nan"), 2.0, 2.5]], 256, 64)
    assert (last.validation_split, last.early_stopping_patience, last.epochs) == (0.0, 0, 11)  # the warm-up's 11
    # Best at epoch 41 of 48 steps (256 rows x 12 passes / 64); an epoch of all 320 rows is 60 steps: 32.8 epochs.
    assert select.refit(candidate, [[9.0] * 40 + [1.0] + [2.0] * 30], 256, 64).epochs == 33
    # Over folds, the median best epoch: of 31, 41, 51 and 71, 46; 46 x 48 / 60 steps is 36.8 epochs.
    folds = [[9.0] * (best - 1) + [1.0] + [2.0] * 5 for best in (51, 31, 71, 41)]
    assert select.refit(candidate, folds, 256, 64).epochs == 37


def test_candidates_span_the_open_settings_and_keep_the_given_ones():
    found = select.candidates(Config(input_size=5, validation_split=0.2), 400)
    assert list(found) == ["standardize-gaussian", "whiten-gaussian", "yeo_johnson-whiten-gaussian",  # simplest first
                           "whiten-linear-shared-k5", "yeo_johnson-whiten-linear-shared-k5",
                           "standardize-64x64-learned-k5", "standardize-64x64-student_t-k5",
                           "yeo_johnson-whiten-64x64-learned-k5", "yeo_johnson-whiten-64x64-full-k5"]
    trained = {name: c for name, c in found.items() if not name.endswith("gaussian")}
    assert all(c.select == "none" and c.early_stopping_patience and c.kl_warmup_epochs for c in trained.values())
    # The classical models, untrained: the Gaussian, and the Gaussian after each feature's Yeo-Johnson transform.
    assert all((c.epochs, c.kl_warmup_epochs, c.early_stopping_patience, c.hidden, c.decoder_scale) == (
        0, 0, 0, (), "shared") for name, c in found.items() if name not in trained)
    assert select.refit(found["whiten-gaussian"], [[]], 320, 80).epochs == 0
    assert not any(name.endswith("gaussian") for name in select.candidates(Config(input_size=5, epochs=7), 400))
    assert not any(name.endswith("gaussian") for name in select.candidates(
        Config(input_size=5, allow_missing=True, missing_mechanism="self-masking"), 400))
    assert "full" not in "".join(select.candidates(Config(input_size=40), 400))
    pinned = select.candidates(Config(input_size=5, normalization="standardize", hidden=(8,), code_size=3), 400)
    assert list(pinned) == ["standardize-8-shared-k3", "yeo_johnson-standardize-8-shared-k3",
                            "standardize-8-learned-k3", "standardize-8-student_t-k3",
                            "yeo_johnson-standardize-8-learned-k3", "yeo_johnson-standardize-8-full-k3"]
    untransformed = select.candidates(Config(input_size=5, transform="none"), 400)
    assert all(c.transform == "none" for c in untransformed.values()) and len(untransformed) == 7
    heavy = select.candidates(Config(input_size=5, decoder_scale="student_t"), 400)
    assert list(heavy) == ["standardize-linear-student_t-k5", "standardize-64x64-student_t-k5"]


def test_learning_the_self_masking_direction_keeps_the_linear_gaussian_candidates_alone():
    """The direction is identified through the values' Gaussian law, which a network's sigma(z) would bend; told the
    direction, the network stays a candidate."""
    learned = select.candidates(Config(input_size=5, allow_missing=True, missing_mechanism="self-masking"), 400)
    assert list(learned) == ["standardize-linear-shared-k5"]
    told = select.candidates(Config(input_size=5, allow_missing=True, missing_mechanism="self-masking-high"), 400)
    assert list(told) == ["standardize-linear-shared-k5", "standardize-64x64-learned-k5"]
    pinned = select.candidates(Config(input_size=5, allow_missing=True, missing_mechanism="self-masking",
                                      hidden=(8,)), 400)
    assert list(pinned) == ["standardize-8-shared-k5"]


def test_a_column_of_positive_values_adds_the_log_floor_before_the_yeo_johnson_one():
    found = select.candidates(Config(input_size=5, validation_split=0.2), 400, positive_columns=True)
    assert list(found)[:4] == ["standardize-gaussian", "whiten-gaussian", "log-whiten-gaussian",
                               "yeo_johnson-whiten-gaussian"]
    assert [name for name in found if name.startswith("log-")] == ["log-whiten-gaussian",
                                                                   "log-whiten-linear-shared-k5"]
    assert list(found)[4:7] == ["whiten-linear-shared-k5", "log-whiten-linear-shared-k5",
                                "yeo_johnson-whiten-linear-shared-k5"]
    for config in (Config(input_size=5, transform="none"),  # pinned, or refused by the mechanism: no log floor
                   Config(input_size=5, allow_missing=True, missing_mechanism="self-masking")):
        assert not any(c.transform == "log" for c in select.candidates(config, 400, positive_columns=True).values())


def test_the_simplest_candidate_is_the_independent_gaussian_which_fills_with_column_means(rng, tmp_path):
    """On a table too small to estimate how its columns depend on each other, no candidate may be kept that the
    independent Gaussian (each column its own mean and sd) beats, nor one that beats it by less than the noise."""
    x = rng.normal(size=(40, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    gaps = rng.random(x.shape) < 0.3
    gaps[:, 1] &= ~gaps[:, [0, 2]].all(axis=1)  # every row keeps a cell
    x[gaps] = np.nan
    x[0] = [np.nan, 1.0, 2.0]
    found = select.candidates(Config(input_size=3, allow_missing=True), 40)
    assert list(found)[0] == "standardize-gaussian"
    independent = found["standardize-gaussian"]
    model = train(dataclasses.replace(independent, validation_split=0.0), x.astype(np.float32), tmp_path / "run",
                  verbose=0)
    filled, _ = model.impute(x[:5].astype(np.float32))
    np.testing.assert_allclose(filled[0, 0], np.nanmean(x[:, 0]), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(filled[0, 1:], np.float32([1.0, 2.0]))
    mean, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    observed = ~np.isnan(x[:5])
    by_hand = np.where(observed, -0.5 * np.log(2 * np.pi * sd**2) - 0.5 * ((x[:5] - mean) / sd) ** 2, 0.0).sum(1)
    np.testing.assert_allclose(log_likelihood(model, x[:5].astype(np.float32), 4)["log_likelihood"], by_hand,
                               rtol=1e-4)


def test_a_candidate_whose_validation_likelihood_is_not_finite_is_neither_chosen_nor_blended(rng, tmp_path,
                                                                                            monkeypatch):
    x = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[np.isnan(x).all(axis=1), 0] = 1.0
    genuine = training.log_likelihood

    def degenerate_when_whitened(model, rows, *args, **kwargs):
        score = genuine(model, rows, *args, **kwargs)
        if model.normalization == "whiten":
            score["log_likelihood"][0] = np.nan
        return score

    monkeypatch.setattr(training, "log_likelihood", degenerate_when_whitened)
    with pytest.warns(UserWarning, match="candidate whiten-gaussian: validation log-likelihood nan .*neither chosen"):
        train(Config(epochs=0, hidden=(), decoder_scale="shared", transform="none", allow_missing=True, seed=0),
              x.astype(np.float32), tmp_path / "run", verbose=0)
    table = {row["name"]: row for row in read_candidates(tmp_path / "run")}
    assert float(table["whiten-gaussian"]["validation_fill_rmse"]) < float(
        table["standardize-gaussian"]["validation_fill_rmse"])  # its fills were better, and still not taken
    assert (table["standardize-gaussian"]["chosen"], table["whiten-gaussian"]["fill_weight"]) == ("True", "0.0")


@pytest.mark.own_process  # late in the suite, a process that has built hundreds of models can crash TensorFlow
def test_a_run_on_positive_columns_fits_the_log_floor_logging_those_alone(rng, tmp_path):
    x = np.exp(rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) * 0.3).astype(np.float32)
    x[::50, 2] = -1.0  # a few negative values: the third column is not logged
    train(Config(epochs=1, hidden=(4,), seed=0, selection_folds=1), x, tmp_path / "run", verbose=0)
    names = [row["name"] for row in read_candidates(tmp_path / "run")]
    assert names[:3] == ["whiten-4-shared-k3", "log-whiten-4-shared-k3", "yeo_johnson-whiten-4-shared-k3"]
    _, logged = load_run(tmp_path / "run" / "candidates" / "log-whiten-4-shared-k3")
    np.testing.assert_array_equal(logged.marginals.logged.numpy(), [1.0, 1.0, 0.0])


def test_beta_nll_and_transforms_pin_the_likelihoods_they_need():
    weighted = select.candidates(Config(input_size=5, nll_beta=0.5), 400)
    assert list(weighted) == ["standardize-64x64-learned-k5", "yeo_johnson-whiten-64x64-learned-k5"]
    with pytest.raises(TfpVaeError, match="nll_beta weighs a learned sigma"):
        Config(decoder_scale="shared", nll_beta=0.5)
    with pytest.raises(TfpVaeError, match="nll_beta must be in"):
        Config(nll_beta=2.0)
    with pytest.raises(TfpVaeError, match="needs a Gaussian decoder"):
        Config(decoder_scale="student_t", transform="yeo_johnson")


def test_multiworker_selection_and_selection_without_validation_rows_are_refused():
    with pytest.raises(TfpVaeError, match="select='none'"):
        Config(strategy="multiworker")
    with pytest.raises(TfpVaeError, match="needs validation rows"):
        Config(validation_split=0.0)
    assert Config(select="none", validation_split=0.0).with_fixed_defaults().hidden == (64, 64)


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """A selection on correlated rows, short schedules: the run folder and the rows it saw."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(400, 2)) @ rng.normal(size=(2, 4)) + 0.2 * rng.normal(size=(400, 4))) * [1, 10, 100, 1e-3]
    run = tmp_path_factory.mktemp("select") / "run"
    train(Config(epochs=4, early_stopping_patience=2, kl_warmup_epochs=1, hidden=(8,), seed=0), x.astype(np.float32),
          run, verbose=0)
    return run, x.astype(np.float32)


def test_simplest_within_one_se_keeps_the_first_candidate_the_figures_cannot_tell_from_the_best():
    best = np.array([1.0, 2.0, 3.0, 4.0])
    # Differences from the best 0.2, 0.6, 0.2, 0.6: mean 0.4 > standard error 0.2309 / sqrt(4) = 0.1155.
    worse = best + [0.2, 0.6, 0.2, 0.6]
    assert select.simplest_within_one_se([worse, best]) == 1
    # Differences 0.6, -0.4, 0.6, -0.4: mean 0.1 <= standard error 0.5774 / sqrt(4) = 0.2887.
    alike = best + [0.6, -0.4, 0.6, -0.4]
    assert select.simplest_within_one_se([alike, best]) == 0
    assert select.simplest_within_one_se([worse, alike, best]) == 1
    # Cells grouped by row: residuals 0.5, -0.5, 0.5, -0.5 sum to 0 in rows {0, 1} and {2, 3}, so the standard
    # error is 0 and the best alone qualifies; in rows {0, 2} and {1, 3} they sum to 1 and -1:
    # sqrt((1 + 1) * 2 / (2 - 1)) / 4 = 0.5 >= 0.1.
    assert select.simplest_within_one_se([alike, best], groups=np.array([7, 7, 9, 9])) == 1
    assert select.simplest_within_one_se([alike, best], groups=np.array([7, 9, 7, 9])) == 0
    # A candidate that errs with the best cell by cell (differences 0.1, 0.1, 0.1, 0.1: error 0) fails where a noisier
    # one with a worse mean passes (differences 1.11, -0.89, 1.11, -0.89: mean 0.11 <= 0.5774); the rule keeps the
    # simpler one, which no later candidate beats on average, not the noisy one (nor where its mean is 0.12).
    together = best + 0.1
    noisy = best + [1.11, -0.89, 1.11, -0.89]
    assert select.simplest_within_one_se([together, noisy, best]) == 0
    assert select.simplest_within_one_se([together + 0.02, noisy, best]) == 1
    # A candidate far worse on average and wilder still (mean difference 5.5, paired error 5.5) passes on its own
    # spread alone; the band is capped at the best's own standard error, 0.6455, so neither it nor the simpler
    # candidate it would hand the choice to (mean 2.5 worse, paired error 0) is kept.
    wild = best + [0.0, 0.0, 0.0, 22.0]
    assert select.simplest_within_one_se([best + 2.5, wild, best]) == 2
    # A candidate with a non-finite loss is never chosen, unless every one has one.
    assert select.simplest_within_one_se([np.array([np.nan, 1.0]), np.array([5.0, 5.0])]) == 1
    assert select.simplest_within_one_se([np.array([np.inf, 1.0]), np.array([np.nan, 5.0])]) == 0


def test_the_summary_names_the_best_candidate_where_the_rule_kept_a_simpler_one():
    table = [{"name": "simple", "validation_log_likelihood": -3.0, "chosen": True},
             {"name": "flexible", "validation_log_likelihood": -2.9, "chosen": False}]
    assert runs.selection_summary(table).endswith(
        "\nchose simple (the simplest within one standard error of the best, flexible): validation log-likelihood "
        "-3.000 nats per row")
    table[0]["chosen"], table[1]["chosen"] = False, True
    assert runs.selection_summary(table).endswith("\nchose flexible: validation log-likelihood -2.900 nats per row")
    table[0]["fill_weight"], table[1]["fill_weight"] = "0.25", "0.75"
    assert runs.fill_blend(table) == {"simple": 0.25, "flexible": 0.75}
    assert runs.selection_summary(table).endswith("out of fold): simple 0.25, flexible 0.75")
    table[0]["fill_weight"], table[1]["fill_weight"] = "0.004", "0.996"  # a small weight shows, not as 0.00
    assert runs.selection_summary(table).endswith("out of fold): simple 0.004, flexible 0.996")
    table[0]["fill_weight"], table[1]["fill_weight"] = "0.0", "1.0"
    assert runs.fill_blend(table) is None and "blend" not in runs.selection_summary(table)


def test_train_keeps_the_simplest_candidate_within_one_standard_error_of_the_best(chosen):
    run, x = chosen
    with open(run / "candidates.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == ["whiten-8-shared-k4", "yeo_johnson-whiten-8-shared-k4",
                                             "standardize-8-learned-k4", "standardize-8-student_t-k4",
                                             "yeo_johnson-whiten-8-learned-k4", "yeo_johnson-whiten-8-full-k4"]
    config, model = load_run(run)
    validation = x[in_validation(np.arange(len(x)), config.validation_split, 0)]
    scores = [log_likelihood(load_run(run / "candidates" / row["name"])[1], validation)["log_likelihood"]
              for row in rows]
    np.testing.assert_allclose([np.mean(score) for score in scores],
                               [float(row["validation_log_likelihood"]) for row in rows], rtol=1e-5)
    index = select.simplest_within_one_se([-score for score in scores])
    assert [row["chosen"] for row in rows] == [str(number == index) for number in range(len(rows))]
    best = rows[index]
    assert (config.normalization, config.transform, config.decoder_scale, config.select) == (
        best["normalization"], best["transform"], best["decoder_scale"], "auto")
    assert all(os.path.exists(run / "candidates" / row["name"] / "model.keras") for row in rows)
    _, candidate = load_run(run / "candidates" / best["name"])
    assert int(best["validation_rows"]) == len(validation) and config.validation_split == 0.25
    np.testing.assert_allclose(evaluate(candidate, validation)["log_likelihood"],
                               float(best["validation_log_likelihood"]), rtol=1e-5)
    # The run's model is the candidate's last fit, on every row, for its best number of epochs.
    last_fit, last_model = load_run(run / "candidates" / "refits" / best["name"])
    assert last_fit.validation_split == 0.0 and not last_fit.early_stopping_patience
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == last_fit.epochs and "val_loss" not in history
    np.testing.assert_array_equal(model.elbo(x[:20]).numpy(), last_model.elbo(x[:20]).numpy())
    assert (run / "thresholds.json").read_text() == (run / "candidates" / best["name"] / "thresholds.json").read_text()


def test_the_classical_gaussian_is_chosen_untrained_and_refitted_on_every_row(rng, tmp_path):
    x = (rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) + 5.0).astype(np.float32)
    model = train(Config(epochs=0, hidden=(), decoder_scale="shared", transform="none", seed=0), x, tmp_path / "run",
                  verbose=0)
    table = read_candidates(tmp_path / "run")
    assert [(row["name"], row["epochs_run"], row["chosen"]) for row in table] == [
        ("whiten-gaussian", "0", "True"), ("standardize-gaussian", "0", "False")]
    centred = x.astype(np.float64) - x.mean(axis=0)
    covariance = centred.T @ centred / len(x)  # every row's: the last fit adds the validation rows
    truth = -0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1]
                    + np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred))
    np.testing.assert_allclose(model.elbo(x[:30]).numpy(), truth[:30], atol=1e-4)
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == {}


@pytest.mark.slow
@pytest.mark.own_process
def test_linear_gaussian_data_picks_a_model_near_the_true_density(rng, tmp_path):
    """Rows from a known linear-Gaussian model: the chosen model's held-out likelihood is within 0.05 nats/feature."""
    d, k = 6, 2
    loadings = rng.normal(size=(k, d)) * [1.0, 3.0, 0.5, 2.0, 1.0, 4.0]
    noise = np.array([0.5, 0.2, 1.0, 0.3, 0.6, 0.4])
    x = rng.normal(size=(3000, k)) @ loadings + noise * rng.normal(size=(3000, d)) + 10.0
    train_rows, test_rows = x[:2400].astype(np.float32), x[2400:]
    covariance = loadings.T @ loadings + np.diag(noise**2)
    centred = test_rows - 10.0
    truth = -0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(covariance)[1]
                    + np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred)).mean()
    model = train(Config(seed=0), train_rows, tmp_path / "run", verbose=0)
    held_out = evaluate(model, test_rows.astype(np.float32), num_samples=200)["log_likelihood"]
    assert (truth - held_out) / d < 0.05, (truth, held_out)


@pytest.mark.slow
@pytest.mark.own_process
def test_heavy_tailed_noise_favours_the_student_t_over_the_gaussian(rng, tmp_path):
    """Two factors plus Student-t noise (2.5 degrees of freedom): on validation rows the Student-t decoder beats the
    Gaussian one with the same network. (The whitened full-covariance candidate can do better still: a covariance
    that varies with z makes a scale mixture of Gaussians, which is how a Student-t is built.)"""
    factors = rng.normal(size=(3000, 2))
    x = factors @ rng.normal(size=(2, 4)) + 0.3 * rng.standard_t(2.5, size=(3000, 4))
    train(Config(seed=0), x.astype(np.float32), tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "candidates.csv", newline="") as file:
        scores = {row["name"]: float(row["validation_log_likelihood"]) for row in csv.DictReader(file)}
    student_t = scores.pop("standardize-128x128-student_t-k4")
    assert student_t > scores["standardize-128x128-learned-k4"] + 0.05, (student_t, scores)
    assert student_t > scores["whiten-linear-shared-k4"] + 0.5, (student_t, scores)


def test_with_gaps_the_candidates_are_those_without_and_a_standardised_floor_is_as_wide_as_the_data():
    assert list(select.candidates(Config(input_size=12, allow_missing=True), 400)) == list(
        select.candidates(Config(input_size=12), 400))
    pinned = select.candidates(Config(input_size=12, allow_missing=True, normalization="standardize"), 400)
    assert "standardize-linear-shared-k12" in pinned and "standardize-64x64-learned-k8" in pinned
    assert "standardize-linear-shared-k3" in select.candidates(
        Config(input_size=12, allow_missing=True, normalization="standardize", code_size=3), 400)


def test_with_gaps_each_untrained_whitened_gaussian_comes_with_and_without_the_prior_and_the_rest_take_it():
    config = Config(input_size=4, allow_missing=True)
    found = select.candidates(config, 400, positive_columns=True, gaps=True)
    gaussians = [name for name, candidate in found.items() if candidate.untrained]
    assert gaussians == ["standardize-gaussian", "whiten-gaussian", "whiten-gaussian-mle", "log-whiten-gaussian",
                         "log-whiten-gaussian-mle", "yeo_johnson-whiten-gaussian", "yeo_johnson-whiten-gaussian-mle"]
    assert [found[name].em_prior_rows for name in gaussians] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert all(candidate.em_prior_rows == 1.0 for candidate in found.values() if not candidate.untrained)
    # Complete training rows: EM is the plain moments whatever the prior, so one of each.
    assert [name for name in found if name.endswith("-mle")] and not [
        name for name in select.candidates(config, 400, positive_columns=True) if name.endswith("-mle")]
    pinned = select.candidates(dataclasses.replace(config, em_prior_rows=0.0), 400, gaps=True)
    assert [name for name, candidate in pinned.items() if candidate.untrained] == [
        "standardize-gaussian", "whiten-gaussian-mle", "yeo_johnson-whiten-gaussian-mle"]
    assert {candidate.em_prior_rows for candidate in pinned.values()} == {0.0}


def test_simplex_weights_minimise_the_blends_squared_error_by_hand():
    # Uncorrelated errors of mean squares 0.5 and 2.0: w proportional to (1 / 0.5, 1 / 2.0) = (0.8, 0.2).
    first, second = np.array([1.0, -1.0, 0.0, 0.0]), np.array([0.0, 0.0, 2.0, -2.0])
    np.testing.assert_allclose(select.simplex_weights(np.stack([first, second], 1)), [0.8, 0.2])
    # A member that errs the same way, only more, gets nothing: any share of it adds error.
    np.testing.assert_allclose(select.simplex_weights(np.stack([first, 2 * first], 1)), [1.0, 0.0])
    # Opposite errors cancel: half and half, no error left.
    np.testing.assert_allclose(select.simplex_weights(np.stack([first, -3 * first], 1)), [0.75, 0.25])
    # A member with a non-finite error is left out.
    np.testing.assert_allclose(select.simplex_weights(np.stack([first, second, np.r_[np.nan, 0, 0, 0]], 1)),
                               [0.8, 0.2, 0.0])


def test_simplex_weights_match_a_search_over_the_simplex(rng):
    errors = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 3)) + [0.3, -0.2, 0.1]
    weights = select.simplex_weights(errors)
    assert np.all(weights >= 0) and np.isclose(weights.sum(), 1.0)
    grid = np.linspace(0, 1, 201)
    searched = min(np.mean((errors @ [a, b, 1 - a - b]) ** 2) for a in grid for b in grid if a + b <= 1)
    assert np.mean((errors @ weights) ** 2) <= searched + 1e-12


def test_a_log_models_blend_takes_log_models_alone_so_its_fills_stay_positive(rng):
    rows = np.repeat(np.arange(300), 2)
    independent = rng.normal(size=(600, 3))  # three members erring independently: all three blend, unless kept out
    assert np.all(select.fill_weights(independent, 1, rows) > 0.2)
    members = select.blend_members(["none", "log", "log"], 1)
    assert members.tolist() == [False, True, True]
    weights = select.fill_weights(independent, 1, rows, members=members)
    assert weights[0] == 0.0 and np.all(weights[1:] > 0.4) and np.isclose(weights.sum(), 1.0)
    assert select.blend_members(["log", "none", "yeo_johnson"], 1).all()  # a log model may join any other's
    broken = independent.copy()
    broken[0, 0] = np.inf  # a member with a non-finite error sits out, and the others still blend
    np.testing.assert_allclose(select.fill_weights(broken, 1, rows), weights)


def test_a_blend_is_kept_where_it_beats_the_chosen_candidate_out_of_fold(rng):
    rows = np.repeat(np.arange(300), 2)  # two cells a row
    independent = rng.normal(size=(600, 2))
    # Two members with independent errors of equal size: the blend halves the mean square, far beyond the noise.
    np.testing.assert_allclose(select.fill_weights(independent, 0, rows), select.simplex_weights(independent))
    assert np.all(select.fill_weights(independent, 0, rows) > 0.4)
    # The second errs like the first plus noise: no blend beats the first, which keeps all the weight.
    noisier = np.stack([independent[:, 0], independent[:, 0] + 0.5 * independent[:, 1]], 1)
    np.testing.assert_array_equal(select.fill_weights(noisier, 0, rows), [1.0, 0.0])
    # Out of fold, each cell's blended error uses weights fitted without its row's cells; a single row has no
    # other fold to learn from.
    blended = select.out_of_fold_errors(independent, rows)
    assert np.isfinite(blended).all() and np.mean(blended**2) < np.mean(independent**2, axis=0).min()
    assert np.isnan(select.out_of_fold_errors(independent[:2], rows[:2])).all()
    assert np.isnan(select.out_of_fold_errors(np.full((600, 2), np.inf), rows)).all()


def test_train_dequantises_integer_columns_says_so_and_leaves_the_array_alone(tmp_path, rng, capsys):
    x = np.column_stack([rng.poisson(4.0, 200), rng.normal(size=200)]).astype(np.float32)
    given = x.copy()
    settings = Config(select="none", epochs=2, hidden=(4,), code_size=1, seed=0)
    model = train(settings, x, tmp_path / "run")
    assert "column(s) 0 hold only integers: every pass adds U(-0.5, 0.5) noise" in capsys.readouterr().out
    np.testing.assert_array_equal(x, given)
    assert model.integer_columns == (0,) and runs.load_config(tmp_path / "run").integer_columns == (0,)
    assert runs.load_run(tmp_path / "run")[1].integer_columns == (0,)
    by_hand = train(settings, x + dequantization_noise(np.arange(200), [0], 2, 0), tmp_path / "by-hand", verbose=0)
    for weights, expected in zip(model.get_weights(), by_hand.get_weights()):
        np.testing.assert_array_equal(weights, expected)
    assert by_hand.integer_columns == ()
    as_given = train(dataclasses.replace(settings, integer_columns=()), x, tmp_path / "as-given")
    assert "hold only integers" not in capsys.readouterr().out and as_given.integer_columns == ()
    assert any(not np.array_equal(a, b) for a, b in zip(as_given.get_weights(), model.get_weights()))
