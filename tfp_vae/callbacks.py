"""Keras callbacks for training a VAE."""

import math
import os
import shutil
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfp_vae._keras import tf_keras
from tfp_vae.errors import RunError, write_failure_cause


class KLWarmup(tf_keras.callbacks.Callback):
    """Raises `model.beta` linearly from `kl_weight / epochs` to `kl_weight` over `epochs` epochs.

    Early in training the KL term can pull every posterior onto the prior before
    the decoder has learned to use the code; warming it up avoids that collapse.
    Only the training loss sees the reduced weight: validation losses weigh the
    KL at `kl_weight`, so they compare across epochs.

    #### Example

    ```python
    model.fit(x, epochs=50, callbacks=[KLWarmup(epochs=10)])
    ```
    """

    def __init__(self, epochs: int):
        super().__init__()
        if epochs < 1:
            raise ValueError(f"KLWarmup needs at least one epoch, got {epochs}")
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        fraction = min(1.0, (epoch + 1) / self.epochs)
        self.model.beta.assign(self.model.kl_weight * fraction)


class EpochScalars(tf_keras.callbacks.Callback):
    """Writes each epoch's metrics as TensorBoard scalars, under `log_dir/train` and `log_dir/validation`.

    Keras's `TensorBoard` callback needs the `tensorboard` package installed to
    write anything; this writes the same scalar events with TensorFlow alone, and
    `tensorboard --logdir log_dir` shows them wherever TensorBoard is.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self.metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

    def on_train_begin(self, logs=None):
        self.writers = {split: tf.summary.create_file_writer(os.path.join(self.log_dir, split))
                        for split in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            split, metric = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            with self.writers[split].as_default():
                tf.summary.write(f"epoch_{metric}", tf.constant(float(value)), step=epoch, metadata=self.metadata)

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()


class KeepLastGoodWeights(tf_keras.callbacks.Callback):
    """Stops at the first non-finite loss and puts back the weights of the last finished epoch.

    After training, `diverged_at` is `(epoch, batch)` where the loss stopped being
    finite (None if it never did) and `good_epoch` the epoch whose weights were kept
    (None: the initial ones).
    """

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


class PeriodicBackupAndRestore(tf_keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore`, writing its checkpoint every `every_epochs` epochs.

    A checkpoint costs about 20 ms; on a few hundred rows an epoch is a handful of
    steps and takes less, so writing one every epoch would double training's time.
    An interrupted run resumes from the last checkpoint, at most `every_epochs - 1`
    epochs back.
    """

    def __init__(self, backup_dir: str, every_epochs: int = 1):
        super().__init__(backup_dir)
        self.every_epochs = every_epochs

    def on_train_begin(self, logs=None):
        self.remove_partial_checkpoints()  # left by a process killed while writing one
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            try:
                super().on_epoch_end(epoch, logs)
            except (OSError, tf.errors.OpError) as error:  # a full disk, a folder gone read-only
                self.remove_partial_checkpoints()
                raise RunError(f"{self.backup_dir}: could not write a checkpoint ({write_failure_cause(error)}); "
                               "the last whole checkpoint is kept: make room, then resume=True continues "
                               "from it") from None

    def remove_partial_checkpoints(self) -> None:
        """Removes the `*_temp` folders that a checkpoint being written lives in until it is whole."""
        for folder, names, _ in os.walk(self.backup_dir):
            for name in [name for name in names if name.endswith("_temp")]:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                names.remove(name)


class EpochLines(tf_keras.callbacks.Callback):
    """One line per epoch (at most one every `seconds`, and always the last), with the figures that matter.

    Keras's progress bar wraps at 80 columns and turns into carriage returns in a
    log file; a line per epoch reads the same on a terminal and in a log.
    """

    SHOWN = ("loss", "reconstruction_loss", "kl_loss", "val_loss")

    def __init__(self, epochs: int, seconds: float = 1.0, stream=None):
        super().__init__()
        self.epochs, self.seconds, self.stream = epochs, seconds, stream
        self.last_printed = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now - self.last_printed < self.seconds and epoch + 1 < self.epochs:
            return
        self.last_printed = now
        figures = ", ".join(f"{name} {logs[name]:.4g}" for name in self.SHOWN if name in (logs or {}))
        print(f"epoch {epoch + 1}/{self.epochs}: {figures}", file=self.stream or sys.stdout, flush=True)
