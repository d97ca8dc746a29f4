"""Training with gaps through a Cholesky factor per row: XLA against TensorFlow's own kernels; and EM's step.

    python benchmarks/gaps_speed.py [--repeats 3] [--out benchmarks/results/gaps_speed.md]

A whitened network with learned sigma(z) (one of the model choice's candidates) scores each row
with gaps by the Gaussian marginal of its observed cells, which factors a covariance per row and
draw (`tfp_vae.gaps`). This times its training steps on rows shaped like digits' (61 features,
1,347 rows, 20% of cells missing at random; batch 64, hidden 128 x 128) compiled with
`jit_compile=True` and with the default `compile()`, which leaves such models to TensorFlow's
kernels; each after a warm-up epoch, median of `--repeats` timings of 5 epochs, in one process.

Whitening with gaps starts from the Gaussian that EM fits (`tfp_vae.gaps.em_gaussian`). Its
expectation step is timed on the same shape of rows (20% and 50% missing) against the textbook
step, which solves each row's observed block S_oo (as wide as its observed cells) where tfp_vae's
inverts the precision's missing block L_uu (as wide as its missing ones): a whole fit with each,
the same iterations, median of `--repeats`.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from report import write_report  # noqa: E402
from tfp_vae import GaussianVAE, gaps  # noqa: E402
from tfp_vae.select import epoch_steps  # noqa: E402

ROWS, FEATURES, MISSING, BATCH, EPOCHS = 1347, 61, 0.2, 64, 5


def gappy_rows(seed: int = 0, missing: float = MISSING) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(8, FEATURES))
    rows = rng.normal(size=(ROWS, 8)) @ mixing + rng.normal(size=(ROWS, FEATURES))
    return np.where(rng.random(rows.shape) < missing, np.nan, rows).astype(np.float32)


def textbook_expectation(x, mask, mean, covariance):
    """`gaps._expectation` by each row's observed block: E[x_u | x_o] = mu_u + S_uo S_oo^-1 (x_o - mu_o)."""
    observed = mask.astype(np.float64)
    padded = covariance * observed[:, :, None] * observed[:, None, :] + np.eye(len(mean)) * (1.0 - observed)[:, None]
    cross = covariance * observed[:, None, :] * (1.0 - observed)[:, :, None]  # S_uo, zero elsewhere
    gain = np.linalg.solve(padded, np.transpose(cross, (0, 2, 1)))  # S_oo^-1 S_ou, padded
    shift = np.einsum("nji,nj->ni", gain, (x - mean) * observed)
    missing = 1.0 - observed
    total = ((covariance - cross @ gain) * missing[:, :, None] * missing[:, None, :]).sum(axis=0)
    return np.where(mask, x, mean + shift), total


def em_seconds(missing: float, expectation, repeats: int) -> float:
    rows = gappy_rows(missing=missing).astype(np.float64)
    own = gaps._expectation
    timings = []
    try:
        gaps._expectation = expectation
        for _ in range(repeats):
            started = time.perf_counter()
            gaps._em_fit(rows)
            timings.append(time.perf_counter() - started)
    finally:
        gaps._expectation = own
    return statistics.median(timings)


def seconds_per_step(jit_compile, repeats: int) -> float:
    x = gappy_rows()
    model = GaussianVAE(FEATURES, code_size=8, hidden=(128, 128), normalization="whiten", transform="yeo_johnson",
                        decoder_scale="learned", allow_missing=True, seed=0)
    model.adapt(x)
    model.compile(jit_compile=jit_compile)
    model.fit(x, epochs=1, batch_size=BATCH, verbose=0)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.fit(x, epochs=EPOCHS, batch_size=BATCH, verbose=0)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) / (EPOCHS * epoch_steps(ROWS, 1, BATCH))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "gaps_speed.md"))
    args = parser.parse_args(argv)
    default, xla = seconds_per_step(None, args.repeats), seconds_per_step(True, args.repeats)
    em = {missing: [em_seconds(missing, step, args.repeats) for step in (gaps._expectation, textbook_expectation)]
          for missing in (0.2, 0.5)}
    write_report([
        "# Training with gaps through a Cholesky factor per row: XLA or not", "",
        f"`python benchmarks/gaps_speed.py --repeats {args.repeats}`: {ROWS} x {FEATURES}, {MISSING:.0%} of cells "
        f"missing at random, whitened network with learned sigma(z), batch {BATCH}; {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}.", "",
        "| compile | ms per step | ratio to the default |", "|---|---|---|",
        f"| `compile()` (the default: no XLA for such models) | {1000 * default:.1f} | 1.00 |",
        f"| `compile(jit_compile=True)` | {1000 * xla:.1f} | {xla / default:.2f} |", "",
        "## EM's fit of the Gaussian with gaps", "",
        f"{ROWS} x {FEATURES} rows as above, float64, every iteration up to convergence (or "
        f"{gaps.EM_ITERATIONS}); median of {args.repeats} fits.", "",
        "| cells missing | tfp_vae's step (precision, L_uu), s | textbook step (S_oo per row), s | ratio |",
        "|---|---|---|---|"]
        + [f"| {missing:.0%} | {own:.2f} | {textbook:.2f} | {textbook / own:.1f} |"
           for missing, (own, textbook) in em.items()], args.out)


if __name__ == "__main__":
    main()
