"""Training orchestration: one entry point, `train`, that the CLI, the demo and the notebooks call.

`train(config, data, run_dir)` builds the model `config` describes, takes its
normalisation statistics from one pass over the training rows, fits it with the
callbacks a run needs (history, checkpoints, TensorBoard scalars, KL warm-up,
early stopping, divergence) under the configured `tf.distribute` strategy, and
writes the run folder (`tfp_vae.runs`). With `select="auto"` (the default) it
first fits each candidate of `tfp_vae.select` into `RUN_DIR/candidates/<name>/`,
scores them on the validation rows and keeps the simplest within one standard
error of the best (with gaps, also the weights of the candidates' fills,
`select.fill_weights`). `train(..., resume=True)`
continues an interrupted run from its last finished epoch (of its last unfinished
candidate) and ends with the number of epochs first asked for. The Gaussian model reads
integer-valued columns dequantised (`pipeline.dequantized`), on every pass.
"""

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time

import numpy as np

from tfp_vae import neighbours, runs, select
from tfp_vae._keras import tf_keras
from tfp_vae.callbacks import EpochLines, EpochScalars, KeepLastGoodWeights, KLWarmup, PeriodicBackupAndRestore
from tfp_vae.config import Config
from tfp_vae.distribute import JoinWatchdog, is_chief, make_strategy, read_tf_config
from tfp_vae.errors import DataError, TrainingDiverged, warn
from tfp_vae.evaluation import fill_errors, leave_one_out, log_likelihood, root_mean_square
from tfp_vae.files import is_new_folder, remove_written
from tfp_vae.model import GaussianVAE, VariationalAutoencoder, named_columns
from tfp_vae.pipeline import (as_source, dataset, dequantized, dropped_rows_message, in_validation,
                              integer_columns, scan)
from tfp_vae.question import QuestionVAE
from tfp_vae.quiet import fitting_many_models
from tfp_vae.transforms import FIT_ROWS, positive_columns

MIN_TRAINING_ROWS = 2
CHECKPOINT_STEPS = 200  # at least this many steps between checkpoints, where epochs are shorter


def build_model(config: Config) -> VariationalAutoencoder:
    """The untrained model `config` describes."""
    if config.model == "question":
        return QuestionVAE(config.input_size, config.code_size, config.kl_weight, seed=config.seed)
    return GaussianVAE(config.input_size, config.code_size, config.hidden, config.posterior, config.decoder_scale,
                       config.kl_weight, normalization=config.normalization, seed=config.seed,
                       transform=config.transform, nll_beta=config.nll_beta, allow_missing=config.allow_missing,
                       missing_mechanism=config.missing_mechanism, importance_samples=config.importance_samples,
                       em_prior_rows=config.em_prior_rows, integer_columns=config.integer_columns or ())


def train(config: Config, data, run_dir, resume: bool = False, verbose: int = 1,
          worker_timeout: float = 120.0) -> VariationalAutoencoder:
    """Trains the model `config` describes and writes the run folder.

    `data` is an array [rows, features] or a `pipeline.CsvSource`, which streams
    from disk. With `resume`, the run folder's own config is used and training
    continues from its last finished epoch. Under `multiworker`, every worker
    calls this and the chief alone writes `run_dir`. Raises `TrainingDiverged`
    (after saving the last good weights) if the loss stops being finite.
    """
    run_dir = os.fspath(run_dir)
    existed, new_folder = os.path.exists(run_dir), not resume and is_new_folder(run_dir)
    if resume:
        config = runs.load_config(run_dir)
    source = as_source(data, config.allow_missing)
    if config.input_size is None:
        config = dataclasses.replace(config, input_size=source.width)  # checks the settings against the width
    if config.model == "gaussian":
        source, config = _dequantized(source, config, verbose)
    watchdog = JoinWatchdog(worker_timeout, read_tf_config()) if config.strategy == "multiworker" else None
    try:
        if config.selects:
            with fitting_many_models():
                return _train_candidates(config, source, run_dir, resume, verbose, watchdog)
        return _train(config.with_fixed_defaults(), source, run_dir, resume, verbose, watchdog)
    except DataError:
        if new_folder:  # input that fails would fail a resume too: leave no half-written run
            remove_written(run_dir, existed)
        raise
    finally:
        if watchdog:
            watchdog.stop()


def _dequantized(source, config: Config, verbose: int):
    """`source` with `config.integer_columns` dequantised (`pipeline.dequantized`), saying which, and `config`
    with them; left open, they are the columns whose values are all integers."""
    columns = integer_columns(source) if config.integer_columns is None else np.asarray(config.integer_columns, int)
    config = dataclasses.replace(config, integer_columns=columns.tolist())
    if not columns.size:
        return source, config
    if verbose:
        print(f"column(s) {named_columns(columns, source.columns)} hold only integers: every pass adds U(-0.5, 0.5) "
              "noise to them (dequantisation), so that a density cannot pile peaks onto the integers, and draws "
              "are rounded back", flush=True)
    return dequantized(source, columns, config.seed), config


def _train_candidates(config: Config, source, run_dir: str, resume: bool, verbose: int,
                      watchdog) -> VariationalAutoencoder:
    """Fits every candidate into RUN_DIR/candidates/<name>/ (and, with several folds, once more per fold), keeps one
    by its validation figures over every fold (`select.simplest_within_one_se`)."""
    runs.check_run_dir(run_dir, resume)
    config = select.held_out(config, lambda: _row_count(source))
    found = scan(source, config.validation_split, config.seed)
    if not resume:
        os.makedirs(run_dir, exist_ok=True)
        runs.save_config(config, run_dir)
    validations = [_validation_rows(source, dataclasses.replace(config, validation_fold=fold))
                   for fold in range(config.selection_folds)]
    held_outs = [leave_one_out(validation, select.FILL_CELLS, config.seed) for validation in validations] \
        if select.chooses_by_fills(config) else None
    by_fills = held_outs is not None and sum(len(gappy) for gappy, _, _ in held_outs) > 0
    # A cell's group is the validation row it came from, numbered across the folds.
    first_rows = np.cumsum([0] + [len(validation) for validation in validations])
    groups = np.concatenate([rows + first for (_, _, rows), first in zip(held_outs, first_rows)]) if by_fills else None
    scale = np.where(found.train_moments.stddev > 0, found.train_moments.stddev, 1.0)
    candidates = select.candidates(config, found.train_rows, bool(positive_columns(found.train_moments).any()),
                                   bool((found.train_moments.observed < found.train_moments.count).any()))
    if verbose:
        cross = f" ({len(validations)} folds: each row held out once)" if len(validations) > 1 else ""
        print(f"choosing the model: {len(candidates)} candidate{'s' * (len(candidates) > 1)} on {found.train_rows} "
              f"training rows, scored on {sum(map(len, validations))} validation rows{cross}" + (
                  f" (their fills of {len(groups)} observed cells, each hidden in turn)" if by_fills else ""),
              flush=True)
    table, losses, errors_by_candidate = [], [], []
    for name, candidate in candidates.items():
        started = time.perf_counter()
        scores, fold_errors = [], []
        for fold, validation in enumerate(validations):
            model = _train_or_load(dataclasses.replace(candidate, validation_fold=fold), source,
                                   runs.candidate_folder(run_dir, name, fold), watchdog, validation)
            scores.append(log_likelihood(model, validation, seed=config.seed)["log_likelihood"])
            if by_fills:
                gappy, truth, _ = held_outs[fold]
                fold_errors.append(fill_errors(model, gappy, truth, scale, seed=config.seed)
                                   if len(gappy) else np.zeros(0))
        score = np.concatenate(scores)
        row = {"name": name, **{key: getattr(candidate, key) for key in runs.CANDIDATE_SETTINGS},
               "epochs_run": len(runs.read_history(runs.candidate_folder(run_dir, name, 0)).get("loss", [])),
               "validation_log_likelihood": float(np.mean(score))}
        degenerate = not np.isfinite(row["validation_log_likelihood"])
        if degenerate:
            warn(f"candidate {name}: validation log-likelihood {row['validation_log_likelihood']} (its density "
                 "degenerated on some validation rows); it is neither chosen nor blended")
        if by_fills:
            errors = np.concatenate(fold_errors)
            row["validation_fill_rmse"] = root_mean_square(errors)
            errors_by_candidate.append(np.full_like(errors, np.nan) if degenerate else errors)
        losses.append(errors_by_candidate[-1] ** 2 if by_fills else -score)
        row["validation_rows"] = len(score)
        row["seconds"] = round(time.perf_counter() - started, 1)
        table.append(row)
        if verbose:
            fills = f", fills {row['validation_fill_rmse']:.3f} column sd" if by_fills else ""
            print(f"candidate {name}: {row['epochs_run']} epochs, validation log-likelihood "
                  f"{row['validation_log_likelihood']:.3f} nats per row{fills} ({row['seconds']:.0f} s)", flush=True)
    chosen_index = select.simplest_within_one_se(losses, groups)
    best = table[chosen_index]
    for row in table:
        row["chosen"] = row is best
    if by_fills:
        row, errors = _neighbours_row(source, config, held_outs, scale, sum(map(len, validations)), verbose)
        table.append(row)
        errors_by_candidate.append(errors)
        # The neighbours' fills are means of observed values, inside every candidate's support.
        members = np.append(select.blend_members([candidate.transform for candidate in candidates.values()],
                                                 chosen_index), True)
        weights = select.fill_weights(np.stack(errors_by_candidate, axis=1), chosen_index, groups, config.seed,
                                      members)
        for row, weight in zip(table, weights):
            row["fill_weight"] = float(weight)
    kept = [row["name"] for row in table if row is best or float(row.get("fill_weight", 0)) > 0]
    if verbose:
        models = [name for name in kept if name != neighbours.NAME]
        print(f"refitting {', '.join(models)} on the training and validation rows together, for the median of the "
              "folds' best epochs' steps" + (f"; {neighbours.NAME} takes every row as its reference"
                                             if len(models) < len(kept) else ""), flush=True)
    for name in kept:  # the other members' models are not kept: `runs.load_imputer` reads them back
        if name == neighbours.NAME:  # the rows as given, not dequantised: its fills and draws are the table's values
            neighbours.NeighbourFill(neighbours.reference_rows(
                (values for values, _, _ in dequantized(source, [], 0).blocks()), seed=config.seed)).save(
                runs.refit_folder(run_dir, name))
        elif name != best["name"]:
            _last_fit(candidates[name], name, source, found, run_dir, len(validations), watchdog)
    model = _last_fit(candidates[best["name"]], best["name"], source, found, run_dir, len(validations), watchdog)
    runs.adopt_candidate(run_dir, best["name"], table)
    if verbose:
        print(runs.selection_summary(table), flush=True)
    return runs.load_run(runs.fitted_folder(run_dir, best["name"]))[1] if model is None else model


def _neighbours_row(source, config: Config, held_outs, scale: np.ndarray, validation_rows: int,
                    verbose: int) -> tuple[dict, np.ndarray]:
    """The nearest rows' row of the selection table, a blend member only (`tfp_vae.neighbours`), and the errors of
    their fills of each fold's held-out validation cells from that fold's training rows."""
    started, errors = time.perf_counter(), []
    for fold, (gappy, truth, _) in enumerate(held_outs):
        if not len(gappy):
            errors.append(np.zeros(0))
            continue
        reference = neighbours.reference_rows(
            (values[~in_validation(row_index, config.validation_split, config.seed, fold)]
             for values, row_index, _ in source.blocks()), seed=config.seed)
        errors.append(fill_errors(neighbours.NeighbourFill(reference), gappy, truth, scale, seed=config.seed))
    errors = np.concatenate(errors)
    row = {"name": neighbours.NAME, **{key: "" for key in runs.CANDIDATE_SETTINGS}, "epochs_run": 0,
           "validation_log_likelihood": math.nan, "validation_fill_rmse": root_mean_square(errors),
           "validation_rows": validation_rows,
           "seconds": round(time.perf_counter() - started, 1), "chosen": False}
    if verbose:
        print(f"blend member {neighbours.NAME}: fills {row['validation_fill_rmse']:.3f} column sd, from the "
              f"{neighbours.NEIGHBOURS} nearest training rows ({row['seconds']:.0f} s)", flush=True)
    return row, errors


def _last_fit(candidate: Config, name: str, source, found, run_dir: str, folds: int,
              watchdog) -> VariationalAutoencoder | None:
    """Candidate `name` fitted once more on the training and validation rows together (`select.refit`), into
    `runs.refit_folder`; None, and that folder removed, where the fit diverged (the candidate's fold-0 fit stands)."""
    histories = [runs.read_history(runs.candidate_folder(run_dir, name, fold)).get("val_loss", [])
                 for fold in range(folds)]
    folder = runs.refit_folder(run_dir, name)
    try:
        return _train_or_load(select.refit(candidate, histories, found.train_rows, found.validation_rows), source,
                              folder, watchdog, refuse_divergence=True)
    except TrainingDiverged as error:
        warn(f"the last fit of {name} diverged ({error}); kept the candidate as it was")
        shutil.rmtree(folder)
        return None


def _train_or_load(candidate: Config, source, folder: str, watchdog, validation: np.ndarray | None = None,
                   refuse_divergence: bool = False) -> VariationalAutoencoder:
    """A candidate's model: trained (or its training resumed) into `folder`, or read back if it had finished.

    A candidate whose training diverged keeps its last good weights, with a warning;
    with `refuse_divergence` the divergence is raised instead.
    """
    if os.path.exists(os.path.join(folder, runs.MODEL_FILE)):
        return runs.load_run(folder)[1]
    try:
        return _train(candidate, source, folder, os.path.exists(folder), verbose=0, watchdog=watchdog,
                      validation=validation)
    except TrainingDiverged as error:
        if refuse_divergence:
            raise
        warn(f"candidate {os.path.basename(folder)}: {error}")
        return runs.load_run(folder)[1]


def elbo_thresholds(model: VariationalAutoencoder, rows: np.ndarray) -> dict | None:
    """Quantiles of the per-row ELBO over `rows` (validation rows): rows scoring below are that rare.

    None where no row has a finite ELBO (a model whose training diverged at once).
    """
    elbo = model.score_in_batches(rows)["elbo"].astype(np.float64)
    elbo = elbo[np.isfinite(elbo)]
    if not len(elbo):
        return None
    return {"elbo_quantiles": {str(q): float(np.quantile(elbo, q)) for q in runs.THRESHOLD_QUANTILES},
            "validation_rows": len(elbo)}


def _row_count(source) -> int:
    return sum(len(values) for values, _, _ in source.blocks())


def _validation_rows(source, config: Config) -> np.ndarray:
    """The validation rows selection scores on (at most `select.MAX_SELECTION_ROWS` of them), in memory."""
    rows = []
    for values, row_index, _ in source.blocks():
        rows.append(values[in_validation(row_index, config.validation_split, config.seed, config.validation_fold)])
        if sum(map(len, rows)) >= select.MAX_SELECTION_ROWS:
            break
    return np.concatenate(rows)[:select.MAX_SELECTION_ROWS].astype(np.float32)


def _train(config: Config, source, run_dir: str, resume: bool, verbose: int, watchdog,
           validation: np.ndarray | None = None) -> VariationalAutoencoder:
    """Trains one model into `run_dir`; `validation`, the validation rows if a caller has read them already."""
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    if chief:
        runs.check_run_dir(run_dir, resume)
    if source.width != config.input_size:
        raise DataError(f"{source.name}: the data has {source.width} columns; this run was set up for "
                        f"{config.input_size}")
    tf_keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config)
        model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate))
    found = scan(source, config.validation_split, config.seed,
                 covariance=model.needs_covariance and not config.allow_missing,
                 keep_rows=FIT_ROWS if model.needs_rows else 0, fold=config.validation_fold)
    if found.train_rows < MIN_TRAINING_ROWS or (config.validation_split > 0 and found.validation_rows == 0):
        raise DataError(f"{source.name}: {found.train_rows + found.validation_rows} row(s) is too few to train with "
                        f"validation split "
                        f"{config.validation_split}; need at least {MIN_TRAINING_ROWS} training rows and 1 "
                        "validation row")
    if found.dropped_rows:
        warn(dropped_rows_message(found.dropped_rows, config.allow_missing))
    try:
        model.set_statistics(found.train_moments, found.train_sample, source.columns)
    except DataError as error:
        raise DataError(f"{source.name}: {error}") from None
    if chief and not resume:
        os.makedirs(run_dir, exist_ok=True)
        runs.save_config(config, run_dir)
    write_dir = run_dir if chief else tempfile.mkdtemp(prefix="tfp-vae-worker-")
    if config.untrained:
        with strategy.scope():  # its optimizer saved as a trained model's is, so it loads without a warning
            model.to_gaussian().optimizer.build(model.trainable_variables)
        keep_good = None
    else:
        keep_good = _fit(model, config, source, found, write_dir, resume, verbose, watchdog)
    if chief and found.validation_rows:
        thresholds = elbo_thresholds(model, _validation_rows(source, config) if validation is None else validation)
    else:
        thresholds = None
    if thresholds:
        runs.save_thresholds(run_dir, thresholds)
    runs.save_model(model, write_dir)  # every worker saves: saving reads variables through collectives
    if chief:
        runs.write_history_json(run_dir)
        runs.remove_if_empty(os.path.join(run_dir, runs.CHECKPOINTS))
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    if keep_good and keep_good.diverged_at is not None:
        epoch, batch = keep_good.diverged_at
        kept = ("the initial weights" if keep_good.good_epoch is None
                else f"the weights of epoch {keep_good.good_epoch + 1}")
        raise TrainingDiverged(
            f"the loss stopped being finite at epoch {epoch + 1}, batch {batch + 1}; kept {kept} in "
            f"{os.path.join(run_dir, runs.MODEL_FILE)}. Try a lower learning_rate, kl_warmup_epochs, "
            "or model='gaussian' (which standardises the data)")
    return model


def _fit(model: VariationalAutoencoder, config: Config, source, found, write_dir: str, resume: bool, verbose: int,
         watchdog) -> KeepLastGoodWeights:
    """Fits `model` with the callbacks a run needs; returns the callback that knows whether it diverged."""
    keep_good = KeepLastGoodWeights()
    callbacks = [
        tf_keras.callbacks.CSVLogger(os.path.join(write_dir, runs.HISTORY_CSV), append=resume),
        PeriodicBackupAndRestore(os.path.join(write_dir, runs.CHECKPOINTS), max(1, round(
            CHECKPOINT_STEPS * config.batch_size / (found.train_rows * config.passes_per_epoch)))),
        keep_good,
        EpochScalars(os.path.join(write_dir, runs.LOGS)),
    ]
    if watchdog:
        callbacks.append(watchdog)
    if verbose:
        callbacks.append(EpochLines(config.epochs))
    if config.kl_warmup_epochs:
        callbacks.append(KLWarmup(config.kl_warmup_epochs))
    if config.early_stopping_patience:
        callbacks.append(tf_keras.callbacks.EarlyStopping(
            "val_loss", patience=config.early_stopping_patience, restore_best_weights=True,
            start_from_epoch=config.kl_warmup_epochs))
    batches = functools.partial(dataset, source, batch_size=config.batch_size,
                                validation_fraction=config.validation_split, seed=config.seed, fold=config.validation_fold)
    model.fit(batches("train", shuffle=True, row_count=found.train_rows, passes=config.passes_per_epoch),
              validation_data=batches("validation", row_count=found.validation_rows) if found.validation_rows else None,
              epochs=config.epochs, verbose=0, callbacks=callbacks)
    return keep_good
