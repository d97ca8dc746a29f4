"""Filling gaps and scoring incomplete rows: tfp_vae's MIWAE training against classical imputers.

    python benchmarks/imputation.py [--seeds 1] [--missing 0.3] [--mechanism mcar|mnar] [--sets ...]
                                    [--vae defaults,miwae] [--all-rows] [--out benchmarks/results/imputation.md]

Each data set of `quality.py` (dequantised as there, same 75/25 split), and iris, loses cells in the
training and the held-out rows alike: a share of them completely at random (`mcar`), or, not at random
(`mnar`, the self-masking protocol of Ipsen et al. 2021), every value above its column's mean in half of
the columns. tfp_vae trains with no flags but
`allow_missing=True` on the gappy training rows and fills their gaps (`load_imputer(run).impute`: the
chosen model, or the blend of candidates the run kept); the classical
imputers fill the same gaps (`--vae miwae` adds tfp_vae with MIWAE's published settings, `MIWAE_SETTINGS`:
Student-t decoder, code 10, 128 x 128, 20 importance samples, 1000 epochs, no model choice): each
column's mean, scikit-learn's `IterativeImputer` (chained
regressions, MICE-like), the same with extra trees (missForest-like) and `KNNImputer` (on standardised
columns), and a
full-covariance Gaussian fitted by EM (`tfp_vae.gaps.em_gaussian`), which fills with its conditional
means. Fills are scored by their root mean squared error over the hidden cells, in units of each
column's standard deviation (lower is better), and its square (the MSE that MIWAE's paper reports).
Not at random, tfp_vae also trains with `missing_mechanism="self-masking"` (not-MIWAE) and with
"self-masking-high" (the protocol's direction given). tfp_vae and the EM Gaussian are also scored
as densities: log p(x_observed) of the held-out gappy rows with at least one observed cell, in nats per
row (higher is better; a
self-masking model's likelihood is of the cells and their mask together, another quantity, left out).
`--all-rows` is MIWAE's protocol instead: every row loses cells and is filled, none is held out (no
density section).
"""

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time

import numpy as np
from sklearn import datasets
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.model_selection import train_test_split

importlib.import_module("sklearn.experimental.enable_iterative_imputer")  # IterativeImputer is experimental
from sklearn.impute import IterativeImputer, KNNImputer  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quality import SPLIT_SEED, data_sets  # noqa: E402
from report import write_report  # noqa: E402
from tfp_vae import Config, evaluate, load_imputer, read_candidates, train  # noqa: E402
from tfp_vae.evaluation import normalised_rmse  # noqa: E402
from tfp_vae.gaps import em_gaussian  # noqa: E402
from tfp_vae.runs import CANDIDATES_CSV, chosen_row, fill_blend  # noqa: E402

MIWAE_SETTINGS = dict(select="none", normalization="standardize", decoder_scale="student_t", code_size=10,
                      hidden=(128, 128), importance_samples=20, epochs=1000, validation_split=0.0)
VAES = {"defaults": ("tfp_vae (allow_missing=True, model chosen by the data)", {}),
        "miwae": ("tfp_vae with MIWAE's settings (Student-t, code 10, 128 x 128, 20 importance samples)",
                  MIWAE_SETTINGS),
        "self-masking": ("tfp_vae, missing_mechanism='self-masking'", dict(missing_mechanism="self-masking")),
        "self-masking-high": ("tfp_vae, missing_mechanism='self-masking-high' (the direction given)",
                              dict(missing_mechanism="self-masking-high"))}
DEFAULT_VAES = {"mcar": "defaults", "mnar": "defaults,self-masking,self-masking-high"}


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


def standardised_knn(rows, neighbours: int = 5) -> np.ndarray:
    """`KNNImputer` on columns scaled to unit standard deviation (its distances otherwise follow the widest
    column's units), back in raw units."""
    centre, scale = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
    return KNNImputer(n_neighbors=neighbours).fit_transform((rows - centre) / scale) * scale + centre


def spread(values) -> str:
    """The mean of one figure over seeds, and their standard deviation where there are several."""
    return f"{np.mean(values):.3f}" + (f" +- {np.std(values):.3f}" if len(values) > 1 else "")


def hidden_cells(x, rng, missing: float, mechanism: str, columns=None) -> np.ndarray:
    """Which cells to hide: a share `missing` at random, or every value above its column's mean in `columns`."""
    if mechanism == "mcar":
        return rng.random(x.shape) < missing
    return np.isin(np.arange(x.shape[1]), columns) & (x > x.mean(axis=0))


def choice(run_dir) -> str:
    """The candidate a run chose, and the blend it fills with where it kept one."""
    table = read_candidates(run_dir)
    blend = fill_blend(table)
    return f"`{chosen_row(table)['name']}`" + ("" if blend is None else ", filling with " + " + ".join(
        f"{weight:.3g} `{name}`" for name, weight in blend.items()))


def run_set(name, x, seed, missing, mechanism, workdir, vaes=("defaults",), all_rows=False):
    x = np.asarray(x, np.float64)
    x_train, x_test = (x, x[:0]) if all_rows else train_test_split(x, test_size=0.25, random_state=SPLIT_SEED)
    rng = np.random.default_rng(seed)
    columns = rng.permutation(x.shape[1])[:x.shape[1] // 2]  # the self-masked half, for mnar
    gappy_train = np.where(hidden_cells(x_train, rng, missing, mechanism, columns), np.nan, x_train)
    gappy_test = np.where(hidden_cells(x_test, rng, missing, mechanism, columns), np.nan, x_test)
    gaps, scale = np.isnan(gappy_train), x_train.std(axis=0)
    fills, models, chosen = {}, {}, {}
    for vae in vaes:
        label, settings = VAES[vae]
        started = time.perf_counter()
        run_dir = os.path.join(workdir, f"{name}-{seed}-{vae}")
        models[vae] = train(Config(seed=seed, allow_missing=True, **settings), gappy_train.astype(np.float32),
                            run_dir, verbose=0)
        chosen[label] = choice(run_dir) if os.path.exists(os.path.join(run_dir, CANDIDATES_CSV)) else None
        fills[label] = (load_imputer(run_dir).impute(gappy_train.astype(np.float32), seed=seed)[0],
                        time.perf_counter() - started)
    started = time.perf_counter()
    mean, covariance = em_gaussian(gappy_train, prior_rows=0.0)
    fills["Gaussian, EM (conditional means)"] = (conditional(gappy_train, mean, covariance)[0],
                                                 time.perf_counter() - started)
    imputers = {
        "IterativeImputer (chained regressions)": IterativeImputer(max_iter=10, random_state=seed).fit_transform,
        "IterativeImputer with extra trees (missForest-like)": IterativeImputer(
            ExtraTreesRegressor(n_estimators=50, random_state=seed, n_jobs=1), max_iter=10,
            random_state=seed).fit_transform,
        "KNNImputer (5 neighbours, standardised columns)": standardised_knn,
        "column means": lambda rows: np.where(np.isnan(rows), np.nanmean(rows, axis=0), rows),
    }
    for imputer, fill in imputers.items():
        started = time.perf_counter()
        fills[imputer] = (fill(gappy_train), time.perf_counter() - started)
    errors = {imputer: normalised_rmse(values, x_train, gaps, scale) for imputer, (values, _) in fills.items()}
    scored_rows = gappy_test[~np.isnan(gappy_test).all(axis=1)]  # as `evaluate`: a row with no cell has no score
    densities = {} if all_rows else {
        **{VAES[vae][0]: evaluate(model, gappy_test.astype(np.float32), seed=seed)["log_likelihood"]
           for vae, model in models.items() if model.missing_mechanism == "at-random"},
        "Gaussian, EM": float(observed_log_density(scored_rows, mean, covariance).mean())}
    return (errors, densities, {imputer: seconds for imputer, (_, seconds) in fills.items()}, float(gaps.mean()),
            chosen)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--missing", type=float, default=0.3, help="share of cells hidden, at random (mcar)")
    parser.add_argument("--mechanism", choices=("mcar", "mnar"), default="mcar",
                        help="mcar: completely at random; mnar: values above the mean, in half the columns")
    parser.add_argument("--sets", default="breast cancer,wine,diabetes,iris,digits",
                        help="comma-separated, of: " + ", ".join(list(data_sets()) + ["iris"]))
    parser.add_argument("--vae", help="comma-separated, of: " + ", ".join(VAES) + "; default: "
                        + "; ".join(f"{mechanism}: {vaes}" for mechanism, vaes in DEFAULT_VAES.items()))
    parser.add_argument("--all-rows", action="store_true",
                        help="MIWAE's protocol: fill every row's gaps, hold none out (no densities)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "imputation.md"))
    args = parser.parse_args(argv)
    args.vae = args.vae or DEFAULT_VAES[args.mechanism]
    started = time.time()
    import tensorflow as tf
    sections = []
    with tempfile.TemporaryDirectory() as workdir:
        sets = {**data_sets(), "iris": (datasets.load_iris().data, None)}
        for name in args.sets.split(","):
            runs = [run_set(name, sets[name][0], seed, args.missing, args.mechanism, workdir,
                            args.vae.split(","), args.all_rows) for seed in range(args.seeds)]
            errors, densities, seconds = ({key: [run[part][key] for run in runs] for key in runs[0][part]}
                                          for part in range(3))
            x = sets[name][0]
            hidden = np.mean([run[3] for run in runs])
            lines = [f"## {name} ({len(x)} rows, {np.shape(x)[1]} features, {hidden:.0%} of "
                     f"{'all' if args.all_rows else 'training'} cells hidden)",
                     "", "| imputer | RMSE of the fills, column standard deviations | MSE | seconds |",
                     "|---|---|---|---|"]
            lines += [f"| {key} | {spread(values)} | {spread(np.square(values))} | {np.mean(seconds[key]):.1f} |"
                      for key, values in sorted(errors.items(), key=lambda item: np.mean(item[1]))]
            if densities:
                lines += ["", "| density | held-out log p(x_observed), nats per row with an observed cell |",
                          "|---|---|"]
                lines += [f"| {key} | {spread(values)} |" for key, values in densities.items()]
            lines += ["", "tfp_vae's seconds include choosing its model among the candidates and training it."]
            lines += [f"{label}, chosen by seed: "
                      + "; ".join(f"{seed} {run[4][label]}" for seed, run in enumerate(runs))
                      for label in runs[0][4] if runs[0][4][label]]
            sections.append("\n".join(lines))
            print(sections[-1], file=sys.stderr, flush=True)
    what = (f"{args.missing:.0%} of cells missing completely at random" if args.mechanism == "mcar"
            else "values above the column mean missing in half the columns (not at random)")
    header = (f"# Imputation: {what}\n\n"
              f"`python benchmarks/imputation.py --seeds {args.seeds} --missing {args.missing} --mechanism "
              f"{args.mechanism} --sets '{args.sets}' --vae {args.vae}{' --all-rows' if args.all_rows else ''}`: "
              f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, TensorFlow {tf.__version__}, "
              f"{(time.time() - started) / 60:.0f} minutes; with several seeds, their mean +- standard deviation.")
    write_report(["\n\n".join([header, *sections])], args.out)


if __name__ == "__main__":
    main()
