"""The run folder: its file names, what may be written where, and reading a finished run back.

    RUN_DIR/config.json     the Config, written before training starts
    RUN_DIR/model.keras     the trained model (weights, normalisation, optimizer state)
    RUN_DIR/history.csv     one row per finished epoch, appended as training goes
    RUN_DIR/history.json    the same, written at the end
    RUN_DIR/logs/           TensorBoard event files
    RUN_DIR/thresholds.json quantiles of the validation rows' ELBO (0.1%, 1%, 5%): anomaly thresholds
    RUN_DIR/checkpoints/    the last finished epoch, while training is under way
    RUN_DIR/candidates.csv  with select="auto": every candidate's settings and validation figures, and with
                            gaps its weight in the run's fills (`fill_weight`, `load_imputer`)
    RUN_DIR/candidates/     with select="auto": a run folder per candidate; the chosen one's files
                            are copied up into RUN_DIR
    RUN_DIR/candidates/folds/<k>/  with several selection folds: each candidate fitted with the k-th fold
                            of rows held out (k = 1, 2, ...; the candidate's own folder holds fold 0)
    RUN_DIR/candidates/refits/<name>/  the last fit, on every row, of the chosen candidate and of each one
                            in the run's fills; its model and history are copied up into RUN_DIR
    RUN_DIR/candidates/refits/neighbours-k5/  where the run's fills keep the nearest rows (`tfp_vae.neighbours`):
                            their reference rows, drawn from every row
"""

import csv
import dataclasses
import json
import math
import os
import shutil
import zipfile

import numpy as np

from tfp_vae.config import Config
from tfp_vae.errors import RunError
from tfp_vae.files import require_new_folder

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
CANDIDATES = "candidates"
THRESHOLDS_JSON = "thresholds.json"
THRESHOLD_QUANTILES = (0.001, 0.01, 0.05)
CANDIDATES_CSV = "candidates.csv"
REFITS = "refits"
FOLDS = "folds"
CANDIDATE_SETTINGS = ("normalization", "transform", "decoder_scale", "hidden", "code_size", "epochs",
                      "passes_per_epoch", "kl_warmup_epochs", "early_stopping_patience", "em_prior_rows")


def candidate_folder(run_dir: str, name: str, fold: int = 0) -> str:
    """The run folder of candidate `name` fitted with validation fold `fold` held out (see the module docstring)."""
    if fold == 0:
        return os.path.join(run_dir, CANDIDATES, name)
    return os.path.join(run_dir, CANDIDATES, FOLDS, str(fold), name)


def refit_folder(run_dir: str, name: str) -> str:
    """The run folder of candidate `name`'s last fit, on the training and validation rows together."""
    return os.path.join(run_dir, CANDIDATES, REFITS, name)


def fitted_folder(run_dir: str, name: str) -> str:
    """Where candidate `name`'s final model is: its last fit where that finished, else its fold-0 fit."""
    refit = refit_folder(run_dir, name)
    return refit if os.path.exists(os.path.join(refit, MODEL_FILE)) else candidate_folder(run_dir, name)


def save_config(config: Config, run_dir: str) -> None:
    with open(os.path.join(run_dir, CONFIG_FILE), "w") as file:
        json.dump(dataclasses.asdict(config), file, indent=2)


def load_config(run_dir) -> Config:
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path) as file:
            return Config(**json.load(file))
    except (FileNotFoundError, NotADirectoryError):
        raise RunError(f"{run_dir}: not a tfp-vae run folder (no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        raise RunError(f"{path}: unreadable run config ({error})") from None


def check_run_dir(run_dir: str, resume: bool) -> None:
    """Refuses to resume what is not an unfinished run, or to write over anything."""
    if resume:
        load_config(run_dir)
        if os.path.exists(os.path.join(run_dir, MODEL_FILE)):
            raise RunError(f"{run_dir}: this run has already finished; nothing to resume")
        return
    if os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        raise RunError(f"{run_dir}: already holds a run; pass resume=True to continue it or choose another run_dir")
    require_new_folder(run_dir, "run_dir", RunError)


def save_model(model, run_dir: str) -> None:
    """Writes model.keras through a temporary file, so a reader never sees half of one."""
    staging = os.path.join(run_dir, ".staging-" + MODEL_FILE)
    model.save(staging)
    os.replace(staging, os.path.join(run_dir, MODEL_FILE))


def read_history(run_dir) -> dict:
    """Each metric's per-epoch values, from history.csv (a re-run epoch keeps its last row).

    Keras's CSV logger writes `NA` for a metric an epoch did not have (validation
    metrics, without validation rows): such a metric is left out. A run of no
    epochs (`epochs=0`) has no history.
    """
    path = os.path.join(os.fspath(run_dir), HISTORY_CSV)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, newline="") as file:
            rows = {int(row["epoch"]): row for row in csv.DictReader(file)}
        history = {}
        for epoch in sorted(rows):
            for name, value in rows[epoch].items():
                if name != "epoch" and value != "NA":
                    history.setdefault(name, []).append(float(value))
    except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as error:
        raise RunError(f"{path}: unreadable training history ({type(error).__name__}: {error})") from None
    return history


def write_history_json(run_dir: str) -> None:
    with open(os.path.join(run_dir, HISTORY_JSON), "w") as file:
        json.dump(read_history(run_dir), file, indent=2)


def save_thresholds(run_dir: str, thresholds: dict) -> None:
    with open(os.path.join(run_dir, THRESHOLDS_JSON), "w") as file:
        json.dump(thresholds, file, indent=2)


def read_thresholds(run_dir) -> dict | None:
    """The run's anomaly thresholds (`thresholds.json`), or None for a run without validation rows."""
    path = os.path.join(os.fspath(run_dir), THRESHOLDS_JSON)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            thresholds = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: unreadable anomaly thresholds ({error}); delete the file to go without them") from None
    if not isinstance(thresholds, dict):
        raise RunError(f"{path}: unreadable anomaly thresholds (expected an object, got {type(thresholds).__name__}); "
                       "delete the file to go without them")
    return thresholds


def remove_if_empty(folder: str) -> None:
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def selection_summary(table: list[dict]) -> str:
    """The candidates as a Markdown table, one row each, and the choice (rows as built or as read back)."""
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in table:
        lines.append("| " + " | ".join(_cell(row[column]) for column in columns) + " |")
    chosen = chosen_row(table)
    score = f"validation log-likelihood {float(chosen['validation_log_likelihood']):.3f} nats per row"
    if "validation_fill_rmse" in chosen:
        score = f"fills of validation cells {float(chosen['validation_fill_rmse']):.3f} column sd (RMSE), {score}"
    best = max(table, key=_merit)
    rule = "" if best is chosen else f" (the simplest within one standard error of the best, {best['name']})"
    blend = fill_blend(table)
    fills = "" if blend is None else ("\nfills with a blend of the candidates, weighed on the validation cells (it "
                                      "beat the chosen one alone there by more than a standard error, out of fold): "
                                      + ", ".join(f"{name} {weight:.3g}" for name, weight in blend.items()))
    return "\n".join(lines) + f"\nchose {chosen['name']}{rule}: {score}{fills}"


def chosen_row(table: list[dict]) -> dict:
    """The chosen candidate's row of a selection table (as built, or as read back from candidates.csv)."""
    return next(row for row in table if str(row["chosen"]) == "True")


def fill_blend(table: list[dict]) -> dict | None:
    """{candidate name: weight} where a run fills with a blend of its candidates (`select.fill_weights`), else None."""
    weights = {row["name"]: float(row["fill_weight"]) for row in table if float(row.get("fill_weight") or 0) > 0}
    return weights if len(weights) > 1 else None


def _merit(row: dict) -> float:
    """A candidate's validation figure, higher better: minus its fills' RMSE where measured, else its likelihood;
    -inf for a row with no finite likelihood (a degenerate candidate, or a blend member that is no model)."""
    merit = -float(row["validation_fill_rmse"]) if "validation_fill_rmse" in row \
        else float(row["validation_log_likelihood"])
    return merit if math.isfinite(merit) and math.isfinite(float(row["validation_log_likelihood"])) else -math.inf


def _cell(value) -> str:
    try:
        return f"{float(value):.3f}" if "." in str(value) else str(value)
    except ValueError:
        return str(value)


def adopt_candidate(run_dir: str, name: str, table: list[dict]) -> None:
    """Writes candidates.csv, and makes the chosen candidate's model, history, logs and config the run's own.

    The model, history and logs come from its last fit on every row where there
    is one (`fitted_folder`); the config (with the validation split selection used)
    and the anomaly thresholds stay the candidate's, which held the validation rows out.
    """
    with open(os.path.join(run_dir, CANDIDATES_CSV), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    candidate = candidate_folder(run_dir, name)
    chosen = fitted_folder(run_dir, name)
    for entry in (HISTORY_CSV, HISTORY_JSON, LOGS, THRESHOLDS_JSON):
        source = os.path.join(candidate if entry == THRESHOLDS_JSON else chosen, entry)
        target = os.path.join(run_dir, entry)
        if os.path.isdir(source):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        elif os.path.exists(source):
            shutil.copyfile(source, target)
    config = dataclasses.replace(load_config(candidate), select="auto")
    save_config(config, run_dir)
    staging = os.path.join(run_dir, ".staging-" + MODEL_FILE)
    shutil.copyfile(os.path.join(chosen, MODEL_FILE), staging)
    os.replace(staging, os.path.join(run_dir, MODEL_FILE))


def read_candidates(run_dir) -> list[dict]:
    """candidates.csv of a run that chose its model, as written (values as text)."""
    with open(os.path.join(os.fspath(run_dir), CANDIDATES_CSV), newline="") as file:
        return list(csv.DictReader(file))


def load_imputer(run_dir, model=None):
    """What fills a finished run's gaps: its blend of candidates (`blend.FillBlend`) where selection kept one, else
    its model. Each member is the candidate's last fit on every row (`fitted_folder`), the chosen one's the run's model;
    `model`, that model where the caller has loaded it already."""
    run_dir = os.fspath(run_dir)
    model = load_run(run_dir)[1] if model is None else model
    table = read_candidates(run_dir) if os.path.exists(os.path.join(run_dir, CANDIDATES_CSV)) else []
    blend = fill_blend(table) if table else None
    if blend is None:
        return model
    from tfp_vae.blend import FillBlend
    from tfp_vae.neighbours import NAME, NeighbourFill
    chosen = chosen_row(table)["name"]
    members = [model if name == chosen else NeighbourFill.load(refit_folder(run_dir, name)) if name == NAME
               else load_run(fitted_folder(run_dir, name))[1] for name in blend]
    weights = np.array(list(blend.values()))
    return FillBlend(members, weights / weights.sum())


def finished_run(run_dir) -> tuple[Config, str]:
    """The config of a finished run and its model file's path; a `RunError` for anything else."""
    run_dir = os.fspath(run_dir)
    config = load_config(run_dir)
    path = os.path.join(run_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise RunError(f"{run_dir}: training has not finished (no {MODEL_FILE}); continue it with resume=True")
    return config, path


def load_run(run_dir):
    """The config and trained model of a finished run."""
    # TensorFlow loads here, not at import, so the command line can check a run folder before it starts.
    from tfp_vae._keras import PACKAGE, tf_keras
    from tfp_vae.model import GaussianVAE
    from tfp_vae.question import QuestionVAE
    config, path = finished_run(run_dir)
    models = {f"{PACKAGE}>{model.__name__}": model for model in (GaussianVAE, QuestionVAE)}
    try:
        return config, tf_keras.models.load_model(path, custom_objects=models)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise RunError(f"{path}: unreadable model file, truncated or not written by tfp-vae "
                       f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'empty'})") from None
