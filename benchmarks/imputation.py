"""Filling gaps and scoring incomplete rows: tfp_vae's MIWAE training against classical imputers.

    python benchmarks/imputation.py [--seeds 1] [--missing 0.3] [--out benchmarks/results/imputation.md]

Each data set of `quality.py` (dequantised as there, same 75/25 split) loses a share of its cells
completely at random, in the training and the held-out rows alike. tfp_vae trains with no flags but
`allow_missing=True` on the gappy training rows and fills their gaps (`model.impute`); the classical
imputers fill the same gaps: each column's mean, scikit-learn's `IterativeImputer` (chained
regressions, MICE-like), the same with extra trees (missForest-like) and `KNNImputer`, and a
full-covariance Gaussian fitted by EM (`tfp_vae.gaps.em_gaussian`), which fills with its conditional means. Fills are scored by their root mean squared error over the hidden cells, in
units of each column's standard deviation (lower is better). tfp_vae and the EM Gaussian are also
scored as densities: log p(x_observed) of the held-out gappy rows, in nats per row (higher is better).
"""

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.model_selection import train_test_split

importlib.import_module("sklearn.experimental.enable_iterative_imputer")  # IterativeImputer is experimental
from sklearn.impute import IterativeImputer, KNNImputer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quality import SPLIT_SEED, data_sets  # noqa: E402
from report import write_report  # noqa: E402
from tfp_vae import Config, evaluate, train  # noqa: E402
from tfp_vae.gaps import em_gaussian  # noqa: E402

def conditional(x, mean, covariance):
    """Each row's gaps filled with E[x_missing | x_observed], and the summed conditional covariances."""
    filled, extra = np.array(x, np.float64), np.zeros_like(covariance)
    for row in filled:
        gaps = np.isnan(row)
        if not gaps.any():
            continue
        seen = ~gaps
        gain = np.linalg.solve(covariance[np.ix_(seen, seen)], covariance[np.ix_(seen, gaps)]).T
        row[gaps] = mean[gaps] + gain @ (row[seen] - mean[seen])
        extra[np.ix_(gaps, gaps)] += covariance[np.ix_(gaps, gaps)] - gain @ covariance[np.ix_(seen, gaps)]
    return filled, extra


def observed_log_density(x, mean, covariance) -> np.ndarray:
    """log N(x_observed; mean_observed, covariance_observed) per row."""
    densities = []
    for row in x:
        seen = ~np.isnan(row)
        block, centred = covariance[np.ix_(seen, seen)], row[seen] - mean[seen]
        densities.append(-0.5 * (seen.sum() * np.log(2 * np.pi) + np.linalg.slogdet(block)[1]
                                 + centred @ np.linalg.solve(block, centred)))
    return np.array(densities)


def normalised_rmse(filled, truth, gaps, scale) -> float:
    return float(np.sqrt(np.mean((((filled - truth) / scale)[gaps]) ** 2)))


def run_set(name, x, seed, missing, workdir):
    x_train, x_test = train_test_split(np.asarray(x, np.float64), test_size=0.25, random_state=SPLIT_SEED)
    rng = np.random.default_rng(seed)
    gappy_train = np.where(rng.random(x_train.shape) < missing, np.nan, x_train)
    gappy_test = np.where(rng.random(x_test.shape) < missing, np.nan, x_test)
    gaps, scale = np.isnan(gappy_train), x_train.std(axis=0)
    started = time.perf_counter()
    model = train(Config(seed=seed, allow_missing=True), gappy_train.astype(np.float32),
                  os.path.join(workdir, f"{name}-{seed}"), verbose=0)
    filled, _ = model.impute(gappy_train.astype(np.float32), seed=seed)
    seconds = time.perf_counter() - started
    mean, covariance = em_gaussian(gappy_train)
    fills = {
        "tfp_vae (allow_missing=True, model chosen by the data)": filled,
        "Gaussian, EM (conditional means)": conditional(gappy_train, mean, covariance)[0],
        "IterativeImputer (chained regressions)": IterativeImputer(max_iter=10, random_state=seed)
        .fit_transform(gappy_train),
        "IterativeImputer with extra trees (missForest-like)": IterativeImputer(
            ExtraTreesRegressor(n_estimators=50, random_state=seed, n_jobs=1), max_iter=10, random_state=seed)
        .fit_transform(gappy_train),
        "KNNImputer (5 neighbours)": KNNImputer(n_neighbors=5).fit_transform(gappy_train),
        "column means": np.where(gaps, np.nanmean(gappy_train, axis=0), gappy_train),
    }
    errors = {imputer: normalised_rmse(values, x_train, gaps, scale) for imputer, values in fills.items()}
    densities = {"tfp_vae": evaluate(model, gappy_test.astype(np.float32), 1000, seed)["log_likelihood"],
                 "Gaussian, EM": float(observed_log_density(gappy_test, mean, covariance).mean())}
    return errors, densities, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--missing", type=float, default=0.3, help="share of cells hidden, at random")
    parser.add_argument("--sets", default="wine,diabetes,breast cancer,synthetic linear-Gaussian")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "imputation.md"))
    args = parser.parse_args(argv)
    started = time.time()
    import tensorflow as tf
    sections = []
    with tempfile.TemporaryDirectory() as workdir:
        sets = data_sets()
        for name in args.sets.split(","):
            runs = [run_set(name, sets[name][0], seed, args.missing, workdir) for seed in range(args.seeds)]
            errors = {key: np.mean([run[0][key] for run in runs]) for key in runs[0][0]}
            densities = {key: np.mean([run[1][key] for run in runs]) for key in runs[0][1]}
            x = sets[name][0]
            lines = [f"## {name} ({len(x)} rows, {np.shape(x)[1]} features)", "",
                     "| imputer | RMSE of the fills, column standard deviations |", "|---|---|"]
            lines += [f"| {key} | {value:.3f} |" for key, value in sorted(errors.items(), key=lambda item: item[1])]
            lines += ["", "| density | held-out log p(x_observed), nats per row |", "|---|---|"]
            lines += [f"| {key} | {value:.3f} |" for key, value in densities.items()]
            lines += ["", f"tfp_vae's training and filling: {np.mean([run[2] for run in runs]):.0f} s per seed."]
            sections.append("\n".join(lines))
            print(sections[-1], file=sys.stderr, flush=True)
    header = (f"# Imputation: {args.missing:.0%} of cells missing completely at random\n\n"
              f"`python benchmarks/imputation.py --seeds {args.seeds} --missing {args.missing}`: "
              f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, TensorFlow {tf.__version__}, "
              f"{(time.time() - started) / 60:.0f} minutes, mean over seeds.")
    write_report(["\n\n".join([header, *sections])], args.out)


if __name__ == "__main__":
    main()
