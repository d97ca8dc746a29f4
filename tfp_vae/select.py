"""Choosing the model from the data, by rules that see only training and validation rows.

`train` with `select="auto"` fits each candidate (`candidates`) on the training
rows, with a schedule sized to their number (`sized`), and scores it on the
validation rows: its log-likelihood of each row (the IWAE bound, with the
`config.LIKELIHOOD_SAMPLES` draws `evaluate` takes: the bound is low by more
where the encoder fits the posterior worse, so with fewer draws the choice would
rank a figure biased against some candidates); `candidates.csv` in the run
folder records them all.
Held-out test rows are never passed to `train`, so they cannot reach the choice.

The candidates run from the simplest to the most flexible, and the one kept is
the simplest whose mean validation figure is within one standard error of the
best one's (`simplest_within_one_se`; the one-standard-error rule of Breiman et
al.'s CART and of glmnet's `lambda.1se`), or a simpler one whose mean is no
worse. The error is that of the paired difference, row by row, so the rows
both candidates found hard cancel, capped at the best's own standard error, so a
far worse candidate cannot pass on the spread of its own errors. On a
table of a few hundred rows the validation rows are few, the best of ten
noisy figures is likely a flexible model's lucky draw, and the rule keeps the
simpler model that the figures cannot tell from it; on a large table the
standard error is small and the rule keeps the best. Where the validation rows
would be fewer than `MIN_VALIDATION_ROWS` (a table under 400 rows), the choice is
cross-validated (`held_out`): each candidate is fitted once per fold, a quarter
of the rows held out each time, and its figures are those of every row.

A model that learns from rows with gaps (`allow_missing`, cells missing at
random) is there to fill them, and the best density need not give the best
fills (a heavy-tailed decoder can win the first and lose the second). Its
choice is by the fills of validation cells whose values are known
(`chooses_by_fills`): each observed cell of a validation row is hidden in turn
and filled from the rest of its row (`evaluation.leave_one_out`, at most
`FILL_CELLS`; with the draws a run's own fills take, `model.IMPUTE_SAMPLES`, so
each figure holds the Monte Carlo noise of the fills it stands for), and the
candidate with the least root mean squared error, in each column's standard
deviation over the training rows, decides (the same rule, over the squared
errors of the cells, paired and grouped by the row they came from). Where the
mechanism is self-masking the cells a user's table lacks are not missing at
random, so hiding observed ones at random would ask the wrong question: those
choose by likelihood (of the cells and their mask), as complete tables do.
Learning the mechanism's direction (`"self-masking"`), the candidates are the
linear ones with a shared sigma alone: the direction is told only by the shape
of the values' law, which they hold Gaussian (self-masked probabilistic PCA is
identifiable: Sportisse, Boyer and Josse 2020), where a network's sigma(z)
makes it a mixture that can put the hidden values on either side and explain
the mask as well, so its likelihood cannot say which direction fills right (in
the not-at-random benchmark the network won it on wine and filled worse than
the column means).

Candidates err differently (a linear Gaussian and a network miss different
cells), so a weighted mean of their fills can err less than any one of them.
With each candidate's normalised errors on the validation cells as the columns
of E, the weights

    w = argmin  mean((E w)^2)   over  w >= 0,  sum(w) = 1

(`simplex_weights`; stacked regression with non-negative weights, Wolpert 1992,
Breiman 1996) blend the fills as sum_i w_i fill_i, whose errors are E w since the
weights sum to one. Weights fitted on the cells they are judged on flatter
them, so the blend is judged out of fold (`out_of_fold_errors`: weights fitted
on the other folds' rows, applied to each fold's cells) and kept only where
that beats the chosen candidate by more than one standard error, the rule the
choice itself follows (`fill_weights`). Its weights are then fitted on every
validation cell, and the run fills with the blend (`tfp_vae.blend`). Besides the
candidates, the nearest training rows' fills (`tfp_vae.neighbours`) are a column
of E: no model (they have no density, and are never chosen), they err where a
global model does not. A blend never leaves the chosen model's support: where it
takes the log of positive columns, its members are the candidates that do too
(`blend_members`), and the nearest rows, whose fills are means of observed values.

The candidates span the normalisation, the decoder's likelihood and the network,
in this order:

- the independent Gaussian, untrained: each feature its own mean and standard
  deviation, whose fills are the column means. No candidate is kept that it
  beats, nor one that beats it by less than the figures' noise: on a table of a
  few dozen rows the validation rows are a handful, and cannot tell a fitted
  covariance from noise;
- the classical model itself: the full-covariance Gaussian of the training rows
  (by EM where they have gaps, `tfp_vae.gaps.em_gaussian`), as a linear model
  left untrained (`epochs=0`, `GaussianVAE.to_gaussian`), and the same after each feature's
  maximum-likelihood Yeo-Johnson transform (and, where the log floor below
  stands, after its logarithm). Where the training rows have gaps each comes
  twice, EM's covariance first under its prior, then without it (`-mle`),
  and the fills decide whether the prior helps. The choice then never keeps a model
  whose validation figures are worse than the classical model's, and keeps the
  classical model unless a flexible one is better by more than the figures'
  noise; chosen, its last fit refits the Gaussian on the training and validation
  rows together;
- the floor: whitened, linear, one learned sigma per feature. It can reach the
  Gaussian above (its decoder ignoring the code, sigma^2 = 1); a linear code
  makes it probabilistic PCA around it;
- where some feature's training values are all positive, the same floor after
  the logarithm of each such feature (`tfp_vae.transforms.Log`): a log-normal,
  the classical model of prices and concentrations, whose fills and draws stay
  positive. It fits no power, so it comes before the Yeo-Johnson floor, whose
  map of the whole real line can fill a positive column with negative values;
- the same floor after a learned Yeo-Johnson transform of each feature
  (`tfp_vae.transforms`), which starts as the Gaussian of the Yeo-Johnson
  transformed rows (the classical model for skewed columns) and learns the
  transform and the dependence together;
- a standardised network with learned sigma(z);
- a standardised network whose decoder is a Student-t with learned degrees of
  freedom per feature: heavy tails, and robustness to outliers;
- after the Yeo-Johnson transform, whitened: a network with learned sigma(z), and
  one with a full-covariance decoder S(z) S(z)^T where the features are few enough
  for its D (D + 1) / 2 outputs (`FULL_COVARIANCE_MAX_FEATURES`). The transform
  contains the identity (lam = 1), so these do not give up the untransformed models.

With gaps (`allow_missing`) the same candidates stand: whitening's covariance is
then fitted by EM and each row scored by the Gaussian marginal of its observed
cells (`tfp_vae.gaps`), so the untrained Gaussian candidate is the
full-covariance Gaussian that EM fits to the rows with gaps. Where the user pins
`normalization="standardize"`, a linear floor gets a code as wide as the data,
which again holds any covariance.

A setting the user gives pins that dimension in every candidate. The sizes below
are rules of the data's shape, chosen before looking at any held-out figure:
network width from the number of training rows (about 8 rows per unit, between
16 and 128), code size `min(D, 8)` (a VAE leaves unused code units at the prior),
and a schedule counted in optimizer steps, so small and large tables see the same
amount of optimisation.
"""

import dataclasses
import itertools
import math
from collections.abc import Callable

import numpy as np

from tfp_vae.config import FIXED_DEFAULTS, Config, incompatibility

MAX_SELECTION_ROWS = 10_000
FILL_CELLS = 10_000
FULL_COVARIANCE_MAX_FEATURES = 32
MAX_CODE_SIZE = 8
ROWS_PER_UNIT = 8
WIDTHS = (16, 128)
WARMUP_STEPS, PATIENCE_STEPS, MAX_STEPS = 500, 1_000, 20_000
MIN_PATIENCE_EPOCHS = 10
MIN_EPOCH_STEPS = 50
MIN_VALIDATION_ROWS = 100
VALIDATION_FRACTIONS = (0.1, 0.25)
BLEND_FOLDS = 5


def validation_fraction(rows: int) -> float:
    """Enough validation rows to compare candidates (about `MIN_VALIDATION_ROWS`), 10% to 25% of them."""
    low, high = VALIDATION_FRACTIONS
    return min(high, max(low, MIN_VALIDATION_ROWS / max(rows, 1)))


def held_out(config: Config, count_rows: Callable[[], int]) -> Config:
    """`config` with its open validation settings sized to the rows: `validation_split` and `selection_folds`.

    Where `validation_fraction` leaves fewer than `MIN_VALIDATION_ROWS` validation
    rows (a table under 400 rows), the candidates are cross-validated: four folds
    of a quarter of the rows each, so every row is a validation row once and the
    choice rests on four times the rows (iris's 150 rows give 150, not 38). Else
    one fold. A split the user gives keeps one fold, and the rows are not counted
    (`count_rows` may pass over a large file); folds the user gives split the rows
    evenly.
    """
    folds, split = config.selection_folds, config.validation_split
    if split is None:
        rows = count_rows()
        split = validation_fraction(rows) if (folds or 1) == 1 else 1 / folds
        if folds is None and rows * split < MIN_VALIDATION_ROWS:
            folds = round(1 / split)
    return dataclasses.replace(config, validation_split=split, selection_folds=folds or 1)


def chooses_by_fills(config: Config) -> bool:
    """Whether the candidates are compared by their fills of validation cells rather than by likelihood."""
    return config.allow_missing and config.missing_mechanism == "at-random"


def simplest_within_one_se(losses: list[np.ndarray], groups: np.ndarray | None = None) -> int:
    """The index of the simplest of `losses` within one standard error of the least mean, or of a simpler one no worse.

    `losses` holds each candidate's validation losses (lower is better), the
    simplest candidate first; all are measured on the same units (rows, or cells),
    so candidate and best are compared unit by unit. The standard error is the
    paired difference's, with units that share a `groups` label (the row a cell
    came from) summed before their spread is taken, since cells of one row err
    together. A simpler candidate whose mean is no worse than the one found is
    kept in its place: a candidate that errs with the best cell by cell has a
    small paired error and can fail where a worse, noisier one passes, and the
    rule must not keep a candidate that a simpler one beats on average. The band
    is never wider than the best's own standard error (the classical rule's): a
    candidate far worse on average and noisier still (a few cells it fills
    wildly) would otherwise pass on its own spread and hand the choice to any
    simpler one that beats it, however far from the best. A candidate with any
    non-finite loss is never chosen, unless all have one (then the first).
    """
    means = np.array([np.mean(loss) if np.all(np.isfinite(loss)) else np.inf for loss in losses])
    if not np.isfinite(means).any():
        return 0
    best = int(np.argmin(means))
    best_loss = np.asarray(losses[best], np.float64)
    labels = np.unique(np.arange(len(best_loss)) if groups is None else groups, return_inverse=True)[1]
    best_error = _standard_error(best_loss, labels)
    for index, loss in enumerate(losses):
        if means[index] - means[best] <= min(_standard_error(np.asarray(loss, np.float64) - best_loss, labels),
                                             best_error):
            return int(np.argmax(means[: index + 1] <= means[index]))
    return best


def _standard_error(values: np.ndarray, labels: np.ndarray) -> float:
    """The standard error of the mean of `values`, those with one label (0, 1, ...) summed before their spread."""
    clusters = labels.max() + 1
    residual_sums = np.bincount(labels, values - values.mean(), minlength=clusters)
    return math.sqrt(np.sum(residual_sums**2) * clusters / max(clusters - 1, 1)) / len(values)


def simplex_weights(errors: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise mean((errors @ w)^2); `errors` [cells, members].

    Exact: for each set of members, the weights of least error that sum to one
    (the Lagrange conditions G w = lambda 1, sum(w) = 1, with G = E^T E / cells,
    solved as one bordered system, which stays solvable where G is singular),
    kept if none is negative; the best kept wins. A member with a non-finite error
    gets weight 0.
    """
    errors = np.asarray(errors, np.float64)
    usable = np.flatnonzero(np.all(np.isfinite(errors), axis=0))
    weights = np.zeros(errors.shape[1])
    if not len(usable):
        return weights
    gram = errors[:, usable].T @ errors[:, usable] / max(len(errors), 1)
    best, best_loss = None, np.inf
    for size in range(1, len(usable) + 1):
        for subset in itertools.combinations(range(len(usable)), size):
            block = gram[np.ix_(subset, subset)]
            bordered = np.block([[block, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            candidate = np.linalg.lstsq(bordered, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if np.any(candidate < 0) or not np.isclose(candidate.sum(), 1.0):
                continue
            loss = candidate @ block @ candidate
            if loss < best_loss:
                best, best_loss = (subset, candidate), loss
    subset, candidate = best
    weights[usable[list(subset)]] = candidate
    return weights


def out_of_fold_errors(errors: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """The blend's error on each cell [cells], its weights fitted on the other `BLEND_FOLDS` - 1 folds' cells.

    Cells are assigned to folds by the row they came from (`groups`), so a row's
    cells, which err together, never sit on both sides. NaN where a fold has no
    other (a single row), or the others no candidate with finite errors.
    """
    labels = np.unique(groups, return_inverse=True)[1]
    folds = np.random.default_rng(seed).permutation(labels.max() + 1)[labels] % BLEND_FOLDS
    blended = np.full(len(errors), np.nan)
    for fold in range(BLEND_FOLDS):
        held = folds == fold
        weights = simplex_weights(errors[~held]) if held.any() and (~held).any() else np.zeros(errors.shape[1])
        if weights.any():
            used = weights > 0  # a member left out may have non-finite errors, which 0 times would make NaN
            blended[held] = errors[held][:, used] @ weights[used]
    return blended


def blend_members(transforms: list[str], chosen: int) -> np.ndarray:
    """Which candidates, by their `transforms`, may join a blend with the `chosen` one: those whose fills stay inside
    its support.

    A log-transformed model fills each column whose training values are all
    positive with positive values; a weighted mean with a model of the whole real
    line need not be, so its blend takes the log-transformed candidates alone.
    """
    return np.array([transform == "log" or transforms[chosen] != "log" for transform in transforms])


def fill_weights(errors: np.ndarray, chosen: int, groups: np.ndarray, seed: int = 0,
                 members: np.ndarray | None = None) -> np.ndarray:
    """Each candidate's weight in the run's fills [members]: all on `chosen`, unless a blend beats it.

    `errors` [cells, members] are the candidates' normalised errors on the
    validation cells, `groups` the row each cell came from, `members` which
    candidates may blend (`blend_members`; all by default; never one with a
    non-finite error). The blend is kept
    where its out-of-fold errors beat the chosen candidate's by more than one
    standard error (`simplest_within_one_se`, the chosen one first); its weights
    are then fitted on every cell.
    """
    usable = np.all(np.isfinite(errors), axis=0) & (True if members is None else members)
    errors = np.where(usable, errors, np.nan)  # no weight, in any fold, for a member left out or erring without bound
    alone = np.eye(errors.shape[1])[chosen]
    blended = out_of_fold_errors(errors, groups, seed)
    if simplest_within_one_se([errors[:, chosen] ** 2, blended ** 2], groups) == 0:
        return alone
    return simplex_weights(errors)


def width(train_rows: int) -> int:
    """Hidden width: a power of two near `train_rows / ROWS_PER_UNIT`, within `WIDTHS`."""
    low, high = WIDTHS
    return int(min(high, max(low, 2 ** round(math.log2(max(train_rows / ROWS_PER_UNIT, 1))))))


def code_size(input_size: int) -> int:
    return min(input_size, MAX_CODE_SIZE)


def sized(config: Config, train_rows: int) -> Config:
    """`config` with its open schedule sized to `train_rows`: epochs, KL warm-up and early stopping in steps.

    An epoch of a small table passes over its rows several times, to at least
    `MIN_EPOCH_STEPS` steps: each epoch's fixed cost (validation, logs, the
    early-stopping check) then stays small beside its steps. Epochs the user gave
    keep one pass each.
    """
    passes = config.passes_per_epoch
    if passes is None:
        passes = max(1, MIN_EPOCH_STEPS // math.ceil(train_rows / config.batch_size)) if config.epochs is None else 1
    steps_per_epoch = epoch_steps(train_rows, passes, config.batch_size)
    epochs = config.epochs if config.epochs is not None else max(2, math.ceil(MAX_STEPS / steps_per_epoch))
    patience = max(MIN_PATIENCE_EPOCHS, math.ceil(PATIENCE_STEPS / steps_per_epoch)) if epochs else 0
    sizes = {"epochs": epochs, "kl_warmup_epochs": min(epochs, max(1, math.ceil(WARMUP_STEPS / steps_per_epoch))),
             "early_stopping_patience": patience}
    return dataclasses.replace(config, passes_per_epoch=passes, **{
        name: value for name, value in sizes.items() if getattr(config, name) is None})


def candidates(config: Config, train_rows: int, positive_columns: bool = False,
               gaps: bool = False) -> dict[str, Config]:
    """The candidate configs by name, the simplest first: every open architecture setting varied, the given ones
    pinned. `positive_columns`: whether some feature's training values are all positive (the log floor's); `gaps`:
    whether the training rows have missing cells (EM's prior then matters)."""
    network = (width(train_rows),) * 2
    independent = dict(normalization="standardize", transform="none", decoder_scale="shared", hidden=())
    grid = [
        independent,  # untrained alone: trained, it is the standardised linear floor, which whitening's contains
        dict(normalization="whiten", transform="none", decoder_scale="shared", hidden=()),
        *([dict(normalization="whiten", transform="log", decoder_scale="shared", hidden=())] if positive_columns
          else []),
        dict(normalization="whiten", transform="yeo_johnson", decoder_scale="shared", hidden=()),
        dict(normalization="standardize", transform="none", decoder_scale="learned", hidden=network),
        dict(normalization="standardize", transform="none", decoder_scale="student_t", hidden=network),
        dict(normalization="whiten", transform="yeo_johnson", decoder_scale="learned", hidden=network),
    ]
    if config.input_size <= FULL_COVARIANCE_MAX_FEATURES:
        grid.append(dict(normalization="whiten", transform="yeo_johnson", decoder_scale="full", hidden=network))
    if config.missing_mechanism == "self-masking":
        grid = [settings for settings in grid if settings["hidden"] == () and settings["decoder_scale"] == "shared"]
    pinned = {name: getattr(config, name) for name in ("normalization", "transform", "decoder_scale", "hidden")
              if getattr(config, name) is not None}
    code = config.code_size if config.code_size is not None else code_size(config.input_size)
    prior = FIXED_DEFAULTS["em_prior_rows"] if config.em_prior_rows is None else config.em_prior_rows
    gaussians, trained = {}, {}
    for settings in grid:
        trains = settings is not independent
        settings = {**settings, **pinned}
        for name, fallback in (("normalization", "standardize"), ("transform", "none")):
            if incompatibility(**_pairing(settings, config)) and name not in pinned:
                settings[name] = fallback  # a pinned likelihood that cannot be whitened or transformed
        if incompatibility(**_pairing(settings, config)):
            continue
        floor_code = settings["hidden"] == () and settings["normalization"] == "standardize" and config.allow_missing
        # Standardised, a linear floor needs a code as wide as the data to hold any covariance (W W^T + sigma^2):
        # with gaps, where whitening is refused, that keeps the full-covariance Gaussian among the candidates.
        candidate = sized(dataclasses.replace(
            config, **settings, select="none", em_prior_rows=prior,
            code_size=config.input_size if floor_code and config.code_size is None else code), train_rows)
        if settings["hidden"] == () and settings["decoder_scale"] == "shared" and config.epochs is None \
                and config.missing_mechanism == "at-random":
            # With gaps the prior shrinks EM's covariance: kept where the validation fills say it helps.
            both = gaps and config.em_prior_rows is None and settings["normalization"] == "whiten"
            for rows in (prior, 0.0) if both else (prior,):
                gaussian = sized(dataclasses.replace(candidate, epochs=0, kl_warmup_epochs=None,
                                                     early_stopping_patience=None, em_prior_rows=rows), train_rows)
                gaussians.setdefault(name_of(gaussian), gaussian)
        if trains:
            trained.setdefault(name_of(candidate), candidate)
    return {**gaussians, **trained}


def epoch_steps(rows: int, passes: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of `passes` passes over `rows` rows."""
    return max(1, math.ceil(rows * passes / batch_size))


def refit(config: Config, fold_validation_losses: list[list], train_rows: int, validation_rows: int) -> Config:
    """The chosen candidate's config for a last fit on its training and validation rows together.

    Selection needs the validation rows held out; the model it keeps need not:
    on a table of a few hundred rows a quarter more rows is worth more than
    early stopping, so the last fit takes as many optimizer steps as the
    candidate took to its best validation epoch (at least its KL warm-up's
    epochs), with no rows held out. Steps, not epochs: an epoch over more rows is
    more steps, and a flexible model trained further than its validated point
    overfits. `fold_validation_losses` holds the candidate's validation losses by
    epoch in each selection fold; the best epoch is the median of the folds' (one
    fold's best is a noisy figure).
    """
    best_epochs = [min(finite)[1] for finite in (
        [(loss, epoch) for epoch, loss in enumerate(losses, 1) if math.isfinite(loss)]
        for losses in fold_validation_losses) if finite]
    best_epoch = float(np.median(best_epochs)) if best_epochs else config.epochs
    steps = best_epoch * epoch_steps(train_rows, config.passes_per_epoch, config.batch_size)
    epochs = round(steps / epoch_steps(train_rows + validation_rows, config.passes_per_epoch, config.batch_size))
    return dataclasses.replace(config, validation_split=0.0, early_stopping_patience=0,
                               epochs=0 if config.untrained else max(epochs, config.kl_warmup_epochs, 1))


def _pairing(settings: dict, config: Config) -> dict:
    return {**{name: settings[name] for name in ("normalization", "decoder_scale", "transform")},
            "nll_beta": config.nll_beta, "allow_missing": config.allow_missing,
            "missing_mechanism": config.missing_mechanism, "importance_samples": config.importance_samples}


def name_of(config: Config) -> str:
    """A candidate's folder name: transform, normalisation, network, likelihood and code size."""
    transform = "" if config.transform == "none" else f"{config.transform}-"
    if config.untrained:
        fit = "-mle" if config.normalization == "whiten" and config.em_prior_rows == 0 else ""
        return f"{transform}{config.normalization}-gaussian{fit}"
    network = "x".join(str(w) for w in config.hidden) if config.hidden else "linear"
    return f"{transform}{config.normalization}-{network}-{config.decoder_scale}-k{config.code_size}"
