"""Training orchestration: one entry point, `train`, that the CLI, the demo and the notebooks call.

A run folder holds everything needed later:

    RUN_DIR/config.json     the Config, written before training starts
    RUN_DIR/model.keras     the trained model (weights, normalisation, optimizer state)
    RUN_DIR/history.csv     one row per finished epoch, appended as training goes
    RUN_DIR/history.json    the same, written at the end
    RUN_DIR/logs/           TensorBoard event files
    RUN_DIR/checkpoints/    the last finished epoch, while training is under way

`train(..., resume=True)` continues an interrupted run from its last finished
epoch and ends with the number of epochs first asked for.
"""

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from tfp_vae._keras import tf_keras
from tfp_vae.callbacks import EpochScalars, KLWarmup
from tfp_vae.config import CONFIG_FILE, Config
from tfp_vae.data import DataError, TfpVaeError
from tfp_vae.model import GaussianVAE, VariationalAutoencoder
from tfp_vae.pipeline import ArraySource, CsvSource, dataset, scan

MODEL_FILE = "model.keras"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
MIN_TRAINING_ROWS = 2
STRATEGIES = ("default", "mirrored", "multiworker")


class RunError(TfpVaeError):
    """A run folder that cannot be used as asked."""


class TrainingDiverged(TfpVaeError):
    """The loss became NaN or infinite; the last good weights were kept."""


class KeepLastGoodWeights(tf_keras.callbacks.Callback):
    """Stops at the first non-finite loss and puts back the weights of the last finished epoch."""

    def __init__(self):
        super().__init__()
        self.diverged_at = None

    def on_train_begin(self, logs=None):
        self.good_weights, self.good_epoch = self.model.get_weights(), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and not np.isfinite(float(logs["loss"])):
            self.diverged_at = (self.epoch, batch)
            self.model.set_weights(self.good_weights)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at is None:
            self.good_weights, self.good_epoch = self.model.get_weights(), epoch


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (every local GPU, else the CPU) or `multiworker` (from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TfpVaeError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def read_tf_config() -> str:
    """Checks TF_CONFIG's shape (cluster, task type and index) and returns its addresses, for messages."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise TfpVaeError("--strategy multiworker needs TF_CONFIG set on every worker (see the README)")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise TfpVaeError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster, task = (tf_config.get("cluster"), tf_config.get("task")) if isinstance(tf_config, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(addresses, list) and addresses and all(isinstance(a, str) and ":" in a for a in addresses)
            for addresses in cluster.values()):
        raise TfpVaeError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]}')
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise TfpVaeError(f'TF_CONFIG needs "task": {{"type": one of {sorted(cluster)}, "index": a position in '
                          f'that list}}, got {task!r}')
    return ", ".join(address for addresses in cluster.values() for address in addresses)


WATCHDOG = """
import os, signal, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.time() + seconds
while time.time() < deadline:
    time.sleep(0.2)
    try:
        os.kill(parent, 0)
    except OSError:
        sys.exit(0)
print("error: " + message, file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)
"""


class JoinWatchdog(tf_keras.callbacks.Callback):
    """Kills this process with a clear error unless the first training step ends within `seconds`.

    Workers meet inside TensorFlow's C++ runtime (at the strategy's start and at
    the first collective) and wait there, holding Python's lock, for every task in
    TF_CONFIG; nothing in this process can interrupt that, so a separate watchdog
    process ends it instead of letting a missing worker hang it for ever.
    """

    def __init__(self, seconds: float, addresses: str):
        super().__init__()
        message = (f"not every worker in TF_CONFIG ({addresses}) joined within {seconds:g} s; check each "
                   "address and that every worker was started (--worker-timeout sets the wait)")
        self.process = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds), message])

    def on_train_batch_end(self, batch, logs=None):
        self.stop()

    def on_train_end(self, logs=None):
        self.stop()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: the chief, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def check_run_dir(run_dir: str, resume: bool) -> None:
    """Refuses to resume what is not an unfinished run, or to write over anything."""
    if resume:
        Config.load(run_dir)
        if os.path.exists(os.path.join(run_dir, MODEL_FILE)):
            raise RunError(f"{run_dir}: this run has already finished; nothing to resume")
        return
    if os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        raise RunError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise RunError(f"{run_dir}: exists and is not an empty folder; choose another --out")


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
    source = data if isinstance(data, (ArraySource, CsvSource)) else ArraySource(data)
    if resume:
        config = Config.load(run_dir)
    elif config.input_size is None:
        config.input_size = source.width
    if config.early_stopping_patience and not config.validation_split:
        raise TfpVaeError("early stopping watches the validation loss: set a validation split above 0")
    watchdog = JoinWatchdog(worker_timeout, read_tf_config()) if config.strategy == "multiworker" else None
    try:
        return _train(config, source, run_dir, resume, verbose, watchdog)
    finally:
        if watchdog:
            watchdog.stop()


def _train(config: Config, source, run_dir: str, resume: bool, verbose: int, watchdog) -> VariationalAutoencoder:
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    if chief:
        check_run_dir(run_dir, resume)
    if source.width != config.input_size:
        raise DataError(f"the data has {source.width} columns; this run was set up for {config.input_size}")
    found = scan(source, config.validation_split, config.seed, covariance=config.normalization == "whiten")
    if found.train_rows < MIN_TRAINING_ROWS or (config.validation_split > 0 and found.validation_rows == 0):
        raise DataError(f"{found.train_rows + found.validation_rows} rows is too few to train with validation split "
                        f"{config.validation_split}; need at least {MIN_TRAINING_ROWS} training rows and 1 "
                        "validation row")
    if found.dropped_rows:
        warnings.warn(f"dropped {found.dropped_rows} row(s) with blank, NaN or infinite cells", stacklevel=2)
    if chief and not resume:
        os.makedirs(run_dir, exist_ok=True)
        config.save(run_dir)
    write_dir = run_dir if chief else tempfile.mkdtemp(prefix="tfp-vae-worker-")

    tf_keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = config.build_model()
        model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate))
    if isinstance(model, GaussianVAE):
        model.set_statistics(found.train_moments)

    keep_good = KeepLastGoodWeights()
    callbacks = [
        tf_keras.callbacks.CSVLogger(os.path.join(write_dir, HISTORY_CSV), append=resume),
        tf_keras.callbacks.BackupAndRestore(os.path.join(write_dir, "checkpoints")),
        keep_good,
        EpochScalars(os.path.join(write_dir, "logs")),
    ]
    if watchdog:
        callbacks.append(watchdog)
    if config.kl_warmup_epochs:
        callbacks.append(KLWarmup(config.kl_warmup_epochs))
    if config.early_stopping_patience:
        callbacks.append(tf_keras.callbacks.EarlyStopping(
            "val_loss", patience=config.early_stopping_patience, restore_best_weights=True,
            start_from_epoch=config.kl_warmup_epochs))
    batches = functools.partial(dataset, source, batch_size=config.batch_size,
                                validation_fraction=config.validation_split, seed=config.seed)
    model.fit(batches("train", shuffle=True, row_count=found.train_rows),
              validation_data=batches("validation", row_count=found.validation_rows) if found.validation_rows else None,
              epochs=config.epochs, verbose=verbose, callbacks=callbacks)
    save_model(model, write_dir)  # every worker saves: saving reads variables through collectives
    if chief:
        write_history_json(run_dir)
        _remove_if_empty(os.path.join(run_dir, "checkpoints"))
    else:
        shutil.rmtree(write_dir, ignore_errors=True)
    if keep_good.diverged_at is not None:
        epoch, batch = keep_good.diverged_at
        kept = "the initial weights" if keep_good.good_epoch is None else f"the weights of epoch {keep_good.good_epoch + 1}"
        raise TrainingDiverged(
            f"the loss stopped being finite at epoch {epoch + 1}, batch {batch + 1}; kept {kept} in "
            f"{os.path.join(run_dir, MODEL_FILE)}. Try a lower --learning-rate, --kl-warmup-epochs, "
            "or --model gaussian (which standardises the data)")
    return model


def save_model(model: VariationalAutoencoder, run_dir: str) -> None:
    """Writes model.keras through a temporary file, so a reader never sees half of one."""
    staging = os.path.join(run_dir, ".staging-" + MODEL_FILE)
    model.save(staging)
    os.replace(staging, os.path.join(run_dir, MODEL_FILE))


def read_history(run_dir) -> dict:
    """Each metric's per-epoch values, from history.csv (a re-run epoch keeps its last row)."""
    with open(os.path.join(os.fspath(run_dir), HISTORY_CSV), newline="") as file:
        rows = {int(row["epoch"]): row for row in csv.DictReader(file)}
    history = {}
    for epoch in sorted(rows):
        for name, value in rows[epoch].items():
            if name != "epoch":
                history.setdefault(name, []).append(float(value))
    return history


def write_history_json(run_dir: str) -> None:
    with open(os.path.join(run_dir, HISTORY_JSON), "w") as file:
        json.dump(read_history(run_dir), file, indent=2)


def _remove_if_empty(folder: str) -> None:
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def load_run(run_dir) -> tuple[Config, VariationalAutoencoder]:
    """The config and trained model of a finished run."""
    run_dir = os.fspath(run_dir)
    config = Config.load(run_dir)
    path = os.path.join(run_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise RunError(f"{run_dir}: training has not finished (no {MODEL_FILE}); "
                       "continue it with tfp-vae train DATA --out RUN_DIR --resume")
    return config, tf_keras.models.load_model(path)
