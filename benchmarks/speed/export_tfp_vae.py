"""Trains the benchmark's model for an epoch and exports it: `python export_tfp_vae.py ROOT FOLDER`.

Public API only, so the export of another checkout (ROOT) can be timed beside today's.
Prints the export's path and that of the model's `.keras` file.
"""

import os
import sys

from common import BATCH, D, HIDDEN, K, report, training_rows, use_checkout

use_checkout(sys.argv[1])
from tfp_vae import GaussianVAE, export_saved_model  # noqa: E402
from tfp_vae._keras import tf_keras  # noqa: E402

model = GaussianVAE(D, K, hidden=(HIDDEN, HIDDEN), seed=0)
model.compile(tf_keras.optimizers.Adam(1e-3))
model.fit(training_rows(), batch_size=BATCH, epochs=1, verbose=0)
model.save(os.path.join(sys.argv[2], "model.keras"))
report({"export": export_saved_model(model, os.path.join(sys.argv[2], "export")),
        "model": os.path.join(sys.argv[2], "model.keras")})
