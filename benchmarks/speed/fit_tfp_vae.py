"""GaussianVAE.fit on the benchmark's problem: `python fit_tfp_vae.py ROOT` prints examples per second."""

import sys
import time

from common import BATCH, D, EPOCHS, HIDDEN, K, report, throughput, training_rows, use_checkout

use_checkout(sys.argv[1])
from tfp_vae import GaussianVAE  # noqa: E402
from tfp_vae._keras import tf_keras  # noqa: E402

x = training_rows()
model = GaussianVAE(D, K, hidden=(HIDDEN, HIDDEN), seed=0)
model.compile(tf_keras.optimizers.Adam(1e-3))
model.adapt(x)
times = []


class Clock(tf_keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)


model.fit(x, batch_size=BATCH, epochs=EPOCHS + 1, verbose=0, callbacks=[Clock()])
report(throughput(times[1:]))
