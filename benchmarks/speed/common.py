"""What every speed program shares: the problem's size, its rows, and how a program reports."""

import json
import sys

import numpy as np

D, HIDDEN, K, BATCH, ROWS, EPOCHS = 64, 256, 16, 256, 20_000, 5
ROUNDS, SMALL_CALLS, LARGE_CALLS = 10, 200, 30  # serving calls per round, batch 1 and batch 1024


def training_rows() -> np.ndarray:
    """ROWS x D float32 rows: eight factors plus noise, at feature scales from 0.01 to 1,000."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 8)) @ rng.normal(size=(8, D)) + 0.3 * rng.normal(size=(ROWS, D))
    return (x * np.geomspace(1e-2, 1e3, D) + 5.0).astype(np.float32)


def use_checkout(root: str) -> None:
    """Imports tfp_vae from the checkout at `root` (today's, or another to compare with)."""
    sys.path.insert(0, root)


def report(value) -> None:
    """The program's result, as the last line of its output."""
    print(json.dumps(value))


def throughput(epoch_seconds) -> float:
    """Examples per second over the timed epochs (the median epoch)."""
    return ROWS / float(np.median(epoch_seconds))
