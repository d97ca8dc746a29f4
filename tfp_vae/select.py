"""Choosing the model from the data, by rules that see only training and validation rows.

`train` with `select="auto"` fits each candidate (`candidates`) on the training
rows, with a schedule sized to their number (`sized`), and keeps the one whose
validation log-likelihood (the IWAE bound, `SELECTION_SAMPLES` draws) is
highest; `candidates.csv` in the run folder records them all. Held-out test rows
are never passed to `train`, so they cannot reach the choice.

The candidates span the normalisation, the decoder's likelihood and the network:

- the floor: whitened, linear, one learned sigma per feature. With its decoder
  ignoring the code it is exactly the full-covariance Gaussian of the training
  rows (whitening's covariance times sigma^2 = 1), so the choice can always fall
  back to the classical model; a linear code makes it probabilistic PCA around it;
- a network with learned sigma(z), standardised and whitened;
- a standardised network whose decoder is a Student-t with learned degrees of
  freedom per feature: heavy tails, and robustness to outliers;
- whitened with a full-covariance decoder S(z) S(z)^T, where the features are few
  enough for its D (D + 1) / 2 outputs (`FULL_COVARIANCE_MAX_FEATURES`).

A setting the user gives pins that dimension in every candidate. The sizes below
are rules of the data's shape, chosen before looking at any held-out figure:
network width from the number of training rows (about 8 rows per unit, between
16 and 128), code size `min(D, 8)` (a VAE leaves unused code units at the prior),
and a schedule counted in optimizer steps, so small and large tables see the same
amount of optimisation.
"""

import dataclasses
import math

from tfp_vae.config import Config, incompatibility

SELECTION_SAMPLES = 100
MAX_SELECTION_ROWS = 10_000
FULL_COVARIANCE_MAX_FEATURES = 32
MAX_CODE_SIZE = 8
ROWS_PER_UNIT = 8
WIDTHS = (16, 128)
WARMUP_STEPS, PATIENCE_STEPS, MAX_STEPS = 500, 1_000, 20_000
MIN_PATIENCE_EPOCHS = 10
MIN_VALIDATION_ROWS = 100
VALIDATION_FRACTIONS = (0.1, 0.25)


def validation_fraction(rows: int) -> float:
    """Enough validation rows to compare candidates (about `MIN_VALIDATION_ROWS`), 10% to 25% of them."""
    low, high = VALIDATION_FRACTIONS
    return min(high, max(low, MIN_VALIDATION_ROWS / max(rows, 1)))


def width(train_rows: int) -> int:
    """Hidden width: a power of two near `train_rows / ROWS_PER_UNIT`, within `WIDTHS`."""
    low, high = WIDTHS
    return int(min(high, max(low, 2 ** round(math.log2(max(train_rows / ROWS_PER_UNIT, 1))))))


def code_size(input_size: int) -> int:
    return min(input_size, MAX_CODE_SIZE)


def sized(config: Config, train_rows: int) -> Config:
    """`config` with its open schedule sized to `train_rows`: epochs, KL warm-up and early stopping in steps."""
    steps_per_epoch = max(1, math.ceil(train_rows / config.batch_size))
    sizes = {"epochs": max(2, math.ceil(MAX_STEPS / steps_per_epoch)),
             "kl_warmup_epochs": max(1, math.ceil(WARMUP_STEPS / steps_per_epoch)),
             "early_stopping_patience": max(MIN_PATIENCE_EPOCHS, math.ceil(PATIENCE_STEPS / steps_per_epoch))}
    return dataclasses.replace(config, **{name: value for name, value in sizes.items()
                                          if getattr(config, name) is None})


def candidates(config: Config, train_rows: int) -> dict[str, Config]:
    """The candidate configs by name: every open architecture setting varied, the given ones pinned."""
    network = (width(train_rows),) * 2
    grid = [
        dict(normalization="whiten", decoder_scale="shared", hidden=()),
        dict(normalization="standardize", decoder_scale="learned", hidden=network),
        dict(normalization="standardize", decoder_scale="student_t", hidden=network),
        dict(normalization="whiten", decoder_scale="learned", hidden=network),
    ]
    if config.input_size <= FULL_COVARIANCE_MAX_FEATURES:
        grid.append(dict(normalization="whiten", decoder_scale="full", hidden=network))
    pinned = {name: getattr(config, name) for name in ("normalization", "decoder_scale", "hidden")
              if getattr(config, name) is not None}
    code = config.code_size if config.code_size is not None else code_size(config.input_size)
    found = {}
    for settings in grid:
        settings = {**settings, **pinned}
        if incompatibility(settings["normalization"], settings["decoder_scale"]) and "normalization" not in pinned:
            settings["normalization"] = "standardize"  # a pinned likelihood that cannot be whitened
        if incompatibility(settings["normalization"], settings["decoder_scale"]):
            continue
        candidate = sized(dataclasses.replace(config, **settings, code_size=code, select="none"), train_rows)
        found.setdefault(name_of(candidate), candidate)
    return found


def name_of(config: Config) -> str:
    """A candidate's folder name: normalisation, network, likelihood and code size."""
    network = "x".join(str(w) for w in config.hidden) if config.hidden else "linear"
    return f"{config.normalization}-{network}-{config.decoder_scale}-k{config.code_size}"
