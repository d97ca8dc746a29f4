"""`tfp-vae`: train, evaluate, export, encode, score, impute, report, sample and demo from the command line.

Argument parsing over the library, and nothing more: a problem with the user's
input becomes one `error: ...` line on stderr and exit code 2.
"""

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import sys
import warnings

from tfp_vae import __version__
from tfp_vae.config import (DECODER_SCALES, DEFAULTS, LIKELIHOOD_SAMPLES, MAX_SEED, MAX_VERSION, MISSING_MECHANISMS,
                            MODELS, NORMALIZATIONS, POSTERIORS, SELECTS, STRATEGIES, TRANSFORMS, Config)
from tfp_vae.errors import TfpVaeError, tensorflow_message
from tfp_vae.files import give_usual_permissions, require_new_folder, staging_file
from tfp_vae.quiet import start_tensorflow_quietly

EXIT_USAGE = 2


def _widths(text: str) -> tuple:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,64, got {text!r}") from None
    if any(width < 1 for width in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return widths


def _bounded_int(least: int, most: int):
    """An argparse type: an integer from `least` to `most`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"expected an integer from {least} to {most}, got {value}")
        return value
    return parse


POSITIVE = _bounded_int(1, MAX_SEED)
RESULT_COPIES = 3  # a result is made in parts, joined, then written
SEED = _bounded_int(0, MAX_SEED)
VERSION = _bounded_int(0, MAX_VERSION)
# Past a few thousand draws the bound barely moves, and each draw costs a pass of every row through the model.
SAMPLES = _bounded_int(1, 1_000_000)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, with a usage problem said in one `error:` line, as every other problem is."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _names(text: str) -> list:
    return [part.strip() for part in text.split(",") if part.strip()]


def _data_arguments(parser):
    parser.add_argument("data", metavar="DATA", help=".csv (header row optional), .npy, or a quoted glob of .csv files")
    parser.add_argument("--columns", type=_names, help="comma-separated column names or indices to use")
    parser.add_argument("--drop-nonfinite", action="store_true",
                        help="skip rows with blank, NaN or infinite cells (and say how many); with --allow-missing, "
                             "or a run trained with it, blank and NaN cells are missing values instead, and an "
                             "infinite cell is still an error")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help (where it has one), and examples kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


EXAMPLES = {
    "train": "tfp-vae train measurements.csv --out runs/first\n"
             "tfp-vae train 'data/part-*.csv' --out runs/big --columns a,b,c --select none --hidden 128,128",
    "evaluate": "tfp-vae evaluate runs/first held_out.csv --samples 1000",
    "export": "tfp-vae export runs/first exports/mymodel",
    "encode": "tfp-vae encode runs/first measurements.csv --out codes.csv",
    "score": "tfp-vae score runs/first new_rows.csv --out scores.csv",
    "sample": "tfp-vae sample runs/first -n 100 --out synthetic.csv --seed 1",
    "impute": "tfp-vae train gappy.csv --out runs/gappy --allow-missing\n"
              "tfp-vae impute runs/gappy gappy.csv --out filled.csv\n"
              "tfp-vae impute runs/gappy gappy.csv --out draws.npy --draws 20",
    "report": "tfp-vae report runs/first held_out.csv --out report  # then open report/index.html",
    "demo": "tfp-vae demo --out demo-output",
}


def _command(commands, name: str, text: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=text, description=text, formatter_class=HelpFormatter,
                               epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tfp-vae", description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
                                     epilog="example:\n  tfp-vae demo\n  tfp-vae train data.csv --out run\n"
                                            "  tfp-vae COMMAND --help   (each command's options)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = _command(commands, "train", "train a model on DATA into a run folder")
    _data_arguments(train)
    train.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder to create")
    train.add_argument("--model", choices=MODELS, default=DEFAULTS.model,
                       help="gaussian: the Gaussian VAE; question: the question's MSE + 1e-4 KL model, as asked")
    train.add_argument("--select", choices=SELECTS, default=DEFAULTS.select,
                       help="auto: fit a few candidates and keep the simplest whose validation log-likelihood (with "
                            "--allow-missing, its fills of validation cells) is within one standard error of the "
                            "best (RUN_DIR/candidates.csv), then refit it on every row; none: train just what the "
                            "flags say. Model flags pin their choice")
    train.add_argument("--code-size", type=int, metavar="K", help="default: chosen from the data (--select none: 2)")
    train.add_argument("--hidden", type=_widths,
                       help="hidden widths, e.g. 64,64, or '' for a linear model (gaussian; default: chosen from "
                            "the data; --select none: 64,64)")
    train.add_argument("--posterior", choices=POSTERIORS, default=DEFAULTS.posterior, help="q(z|x)'s covariance")
    train.add_argument("--decoder-scale", choices=DECODER_SCALES,
                       help="the decoder's likelihood: learned sigma(z), shared (one per feature), optimal "
                            "(sigma-VAE), fixed, full (a covariance from the network, for residuals correlated given "
                            "the code, such as derived columns) or student_t (heavy tails; standardize only) "
                            "(gaussian; default: chosen from the data; --select none: learned)")
    train.add_argument("--normalization", choices=NORMALIZATIONS,
                       help="whiten: also decorrelate the features, so the decoder's noise is correlated in raw "
                            "units (gaussian; default: chosen from the data; --select none: standardize)")
    train.add_argument("--transform", choices=TRANSFORMS,
                       help="log: the logarithm of each column whose training values are all positive, whose fills "
                            "and samples then stay positive; yeo_johnson: a learned power transform of each feature, "
                            "for skewed columns; both before the normalisation (gaussian, not student_t; default: "
                            "chosen from the data; --select none: none)")
    train.add_argument("--nll-beta", type=float, metavar="B", default=DEFAULTS.nll_beta,
                       help="train a learned sigma(z) by beta-NLL (Seitzer et al. 2022): each feature's term "
                            "weighted by sigma^(2B), so noisy features still get their means fitted; 0 is the "
                            "likelihood, 0.5 the paper's choice (pins --decoder-scale learned)")
    train.add_argument("--kl-weight", type=float, metavar="W", help="default 1 (gaussian), 1e-4 (question)")
    train.add_argument("--kl-warmup-epochs", type=int, metavar="N",
                       help="raise the KL weight linearly over the first N epochs; early stopping waits for them "
                            "(default: about 500 steps; --select none: 0)")
    train.add_argument("--epochs", type=int,
                       help="at most this many (default: about 20,000 steps; --select none: 100); 0 with --hidden '' "
                            "and --decoder-scale shared: no training, the Gaussian of the training rows (whitened: "
                            "full covariance)")
    train.add_argument("--early-stopping-patience", type=int, metavar="N",
                       help="stop when the validation loss (the KL at its full weight) has not improved for "
                            "N epochs, keeping the best (default: about 1,000 steps, at least 10 epochs; "
                            "--select none: 0, off)")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="rows per step")
    train.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate, help="Adam's step size")
    train.add_argument("--validation-split", type=float, metavar="F",
                       help="share of rows held out for validation (default: 0.1 to 0.25, about 100 rows; "
                            "--select none: 0.1)")
    train.add_argument("--selection-folds", type=int, metavar="K",
                       help="fit each candidate K times, holding out each of K folds of the rows in turn, and choose "
                            "by every row's figures (default: 4 under 400 rows, else 1; 1 is four times faster on a "
                            "small table)")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed, help="fixes weights, noise and the split")
    train.add_argument("--strategy", choices=STRATEGIES, default=DEFAULTS.strategy,
                       help="tf.distribute: one device, every local GPU, or the machines in TF_CONFIG")
    train.add_argument("--worker-timeout", type=_seconds, default=120.0, metavar="SECONDS",
                       help="multiworker: how long to wait for every worker in TF_CONFIG to join")
    train.add_argument("--allow-missing", action="store_true",
                       help="learn from tables with gaps: blank, NA, N/A, NaN and null cells are missing, and the "
                            "likelihood is over each row's observed cells (gaussian model)")
    train.add_argument("--missing-mechanism", choices=MISSING_MECHANISMS, default=DEFAULTS.missing_mechanism,
                       help="with --allow-missing, why cells are missing: at-random (MIWAE), or self-masking, where a "
                            "value's own size sets its chance of being missing, as when a sensor saturates (not-MIWAE: "
                            "likelihoods are then of the cells and their mask together); self-masking-high or -low "
                            "where larger (or smaller) values are known to be the ones more often missing")
    train.add_argument("--importance-samples", type=int, metavar="S", default=DEFAULTS.importance_samples,
                       help="draws of the code per row in each step: 1 trains on the ELBO, more on the tighter "
                            "importance-weighted bound (IWAE; MIWAE's with --allow-missing) at S times the "
                            "decoder's cost (gaussian)")
    train.add_argument("--em-prior-rows", type=float, metavar="K",
                       help="with --allow-missing, the weight in rows of the independent Gaussian's prior under which "
                            "EM fits whitening's covariance to rows with gaps (0: maximum likelihood; default: the "
                            "model choice tries the untrained Gaussian with 1 and 0, and whitens the rest with 1)")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN_DIR")
    train.add_argument("--quiet", action="store_true", help="no progress lines")

    evaluate = _command(commands, "evaluate", "held-out metrics of a run on DATA, as JSON")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    _data_arguments(evaluate)
    evaluate.add_argument("--samples", type=SAMPLES, default=LIKELIHOOD_SAMPLES, help="importance samples per row")
    evaluate.add_argument("--seed", type=SEED, default=0, help="fixes the importance samples")

    export = _command(commands, "export", "write a SavedModel version for TensorFlow Serving")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("export_base", metavar="EXPORT_BASE")
    export.add_argument("--version", type=VERSION, help="default: one more than the highest present")

    for name, text in (("encode", "code means, one row per input row"),
                       ("score", "per-row elbo (lower is stranger), reconstruction log-prob and KL")):
        command = _command(commands, name, text)
        command.add_argument("run_dir", metavar="RUN_DIR")
        _data_arguments(command)
        command.add_argument("--out", required=True, metavar="FILE", help=".csv or .npy")

    impute = _command(commands, "impute", "fill the missing cells of DATA from a run trained with --allow-missing")
    impute.add_argument("run_dir", metavar="RUN_DIR")
    _data_arguments(impute)
    impute.add_argument("--out", required=True, metavar="FILE",
                        help=".csv or .npy: DATA's rows and columns, observed cells as read (from a CSV to a CSV, every "
                             "column as written, those not used too), missing ones set to E[x_missing | x_observed]")
    impute.add_argument("--draws", type=POSITIVE, metavar="N",
                        help="instead, N draws from p(x_missing | x_observed) for multiple imputation: FILE is a "
                             ".npy [N, rows, columns]")
    impute.add_argument("--seed", type=SEED, default=0, help="fixes the importance samples and draws")

    report = _command(commands, "report", "pictures of a run (and, given DATA, its calibration): PNGs and index.html")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("data", metavar="DATA", nargs="?", help="rows to score (optional): .csv, .npy or a glob")
    report.add_argument("--columns", type=_names, help="comma-separated column names or indices to use")
    report.add_argument("--drop-nonfinite", action="store_true", help="skip rows with blank, NaN or infinite cells")
    report.add_argument("--out", required=True, metavar="DIR", help="a new folder for the PNGs and index.html")

    sample = _command(commands, "sample", "draw rows from a trained model, in raw units")
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("-n", "--num-samples", type=POSITIVE, required=True, metavar="N", help="rows to draw")
    sample.add_argument("--out", required=True, metavar="FILE", help=".csv or .npy")
    sample.add_argument("--seed", type=SEED, default=0, help="fixes the draws")

    demo = _command(commands, "demo", "the question's model against the Gaussian VAE on real data")
    demo.add_argument("--out", default="tfp-vae-demo", metavar="DIR", help="a new folder for its runs and export")
    demo.add_argument("--epochs", type=int,
                      help="epochs per model (default: 150 for the fixed models; the chosen model sizes its own)")
    demo.add_argument("--quiet", action="store_true", help="only the results table")
    return parser


def _read(args, config=None):
    from tfp_vae.data import read_table
    from tfp_vae.pipeline import dropped_rows_message
    table = read_table(args.data, _columns(args, config), args.drop_nonfinite,
                       allow_missing=bool(config and config.allow_missing))
    if table.dropped_rows:  # rows are left out here only under --drop-nonfinite
        print(f"warning: {dropped_rows_message(table.dropped_rows, False)}", file=sys.stderr)
    return table


def _columns(args, config=None):
    """The columns to read: those asked for, else the run's."""
    return args.columns if args.columns is not None else (config.columns if config else None)


def _check_output_file(path: str) -> str:
    """The folder an output file goes to, once its name and folder are known to be usable."""
    if not path.endswith((".csv", ".npy")):
        raise TfpVaeError(f"{path}: output must end in .csv or .npy")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TfpVaeError(f"{path}: folder {folder} does not exist")
    return folder


def _write_rows(path: str, values, header: list, shortest: bool = False) -> None:
    """Writes a .csv or .npy file through a temporary file beside it, so it is whole or absent.

    `shortest`: each CSV cell as the shortest text that reads back as the same float32 (0.1, not 0.100000001).
    """
    import numpy as np

    def write(file):
        if path.endswith(".npy"):
            np.save(file, np.asarray(values, np.float32))
            return
        file.write((",".join(header) + "\n").encode())
        if shortest:
            file.write("".join(",".join(map(_shortest, row)) + "\n" for row in np.asarray(values, np.float32))
                       .encode())
        else:
            np.savetxt(file, values, delimiter=",", fmt="%.9g")
    _write_through_staging(path, write)


def _write_through_staging(path: str, write) -> None:
    """Calls `write` on a binary staging file beside `path`, then renames it into place: whole or absent."""
    folder = _check_output_file(path)
    try:
        handle, staging = staging_file(folder, ".tfp-vae-", os.path.splitext(path)[1])
        try:
            with os.fdopen(handle, "wb") as file:
                write(file)
            give_usual_permissions(staging)
            os.replace(staging, path)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
    except OSError as error:  # named for the file asked for, not the staging file beside it
        raise TfpVaeError(f"{path}: cannot write ({error.strerror or error})") from None


def _shortest(value) -> str:
    import numpy as np
    if value == 0 or 1e-4 <= abs(value) < 1e16:
        return np.format_float_positional(value, unique=True, trim="-")
    return np.format_float_scientific(value, unique=True, trim="-")


def _train(args):
    from tfp_vae.pipeline import source_for
    from tfp_vae.runs import CANDIDATES_CSV, load_config, read_candidates, read_history, selection_summary
    from tfp_vae.training import train
    if args.resume:
        config = load_config(args.out)
        source = source_for(args.data, config.columns, args.drop_nonfinite, allow_missing=config.allow_missing)
    else:
        source = source_for(args.data, args.columns, args.drop_nonfinite, allow_missing=args.allow_missing)
        config = _config(args, source.columns)
    train(config, source, args.out, resume=args.resume, verbose=0 if args.quiet else 1,
          worker_timeout=args.worker_timeout)
    if args.quiet and os.path.exists(os.path.join(args.out, CANDIDATES_CSV)):
        print(selection_summary(read_candidates(args.out)))
    history = read_history(args.out)
    print(f"trained {config.model} model: {args.out} ({len(history.get('loss', []))} epochs)")
    if history.get("val_loss"):
        best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
        print(f"best epoch {best + 1}: validation loss {history['val_loss'][best]:.4g} nats per row (negative ELBO)")
    if history:
        print(f"files: {args.out}/model.keras, history.csv; tensorboard --logdir {args.out}/logs")
    else:
        print(f"files: {args.out}/model.keras (no epochs: the Gaussian of the training rows)")


def standard_json(value):
    """`value` with every NaN or infinite float as None: JSON has no such numbers, and many readers refuse them."""
    if isinstance(value, dict):
        return {key: standard_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _config(args, feature_names=None) -> Config:
    """The run settings the train command's flags give (checked as it is built)."""
    return Config(model=args.model, code_size=args.code_size, hidden=args.hidden, posterior=args.posterior,
                  decoder_scale=args.decoder_scale, normalization=args.normalization, transform=args.transform,
                  nll_beta=args.nll_beta, kl_weight=args.kl_weight, kl_warmup_epochs=args.kl_warmup_epochs,
                  early_stopping_patience=args.early_stopping_patience, epochs=args.epochs,
                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                  validation_split=args.validation_split, seed=args.seed, strategy=args.strategy,
                  select=args.select, columns=args.columns, feature_names=feature_names,
                  allow_missing=args.allow_missing, missing_mechanism=args.missing_mechanism,
                  importance_samples=args.importance_samples, em_prior_rows=args.em_prior_rows,
                  selection_folds=args.selection_folds)


def _preflight(args) -> None:
    """Everything that can be checked before TensorFlow starts (several seconds): options, folders, files.

    A mistake is then answered at once rather than after the start-up.
    """
    from tfp_vae import data, runs
    config = None
    if hasattr(args, "run_dir"):
        config, _ = runs.finished_run(args.run_dir)
        runs.read_thresholds(args.run_dir)
    if args.command == "train":
        if args.strategy != "multiworker":  # there, the chief alone owns the run folder
            runs.check_run_dir(args.out, args.resume)
        if args.resume:
            config = runs.load_config(args.out)
            _refuse_changes_on_resume(args, config)
        else:
            _config(args)
    elif args.command in ("report", "demo"):
        require_new_folder(args.out, "--out")
    elif hasattr(args, "out"):
        _check_output_file(args.out)
    if getattr(args, "data", None) is not None:
        _refuse_overwriting_input(args)
        columns = _columns(args, config)
        for path in data.expand_paths(args.data):
            if path.endswith(".csv"):
                header = data.csv_header(path)[0]
                selected = [header[i] for i in data.select_columns(header, columns, path)]
                data.require_columns_of_run(selected, header, config.feature_names if config else None, path)
            elif not path.endswith(".npy"):
                raise TfpVaeError(f"{path}: unsupported file type; use .csv or .npy")


def _refuse_changes_on_resume(args, config: Config) -> None:
    """--resume continues a run as it was set up: a flag given now that says otherwise is an error, not ignored."""
    defaults = build_parser().parse_args(["train", args.data, "--out", args.out])
    settings = [field.name for field in dataclasses.fields(Config) if field.name in FLAGS]
    changed = [f"{FLAGS[name]} {getattr(args, name)!r} (the run has {getattr(config, name)!r})"
               for name in settings if getattr(args, name) != getattr(defaults, name)
               and getattr(args, name) != getattr(config, name)]
    if changed:
        raise TfpVaeError(f"{args.out}: --resume continues the run as it was set up; these flags differ: "
                          + "; ".join(changed))


def _refuse_overwriting_input(args) -> None:
    """An output file that is one of the data files read would destroy them: refused before any work."""
    if not hasattr(args, "out") or args.command == "train":
        return
    inputs = glob.glob(args.data) if glob.has_magic(args.data) else [args.data]
    if os.path.realpath(args.out) in {os.path.realpath(path) for path in inputs}:
        raise TfpVaeError(f"{args.out}: is the data being read; choose another --out")


def _evaluate(args):
    from tfp_vae.evaluation import evaluate
    from tfp_vae.pipeline import source_for
    from tfp_vae.runs import load_run, read_thresholds
    config, model = load_run(args.run_dir)
    thresholds = read_thresholds(args.run_dir) or {}
    source = source_for(args.data, args.columns if args.columns is not None else config.columns, args.drop_nonfinite,
                        allow_missing=config.allow_missing)
    metrics = evaluate(model, source, args.samples, args.seed)
    metrics["elbo_thresholds"] = thresholds.get("elbo_quantiles")
    print(json.dumps(standard_json(metrics), indent=2, allow_nan=False))


def _export(args):
    from tfp_vae.export import export_saved_model
    from tfp_vae.runs import load_imputer, load_run, read_thresholds
    config, model = load_run(args.run_dir)
    imputer = load_imputer(args.run_dir, model) if config.allow_missing else None
    print(export_saved_model(model, args.export_base, args.version, read_thresholds(args.run_dir), imputer))


def _encode(args):
    from tfp_vae.runs import load_run
    config, model = load_run(args.run_dir)
    x = _read(args, config).values
    model.check_input(x, source=args.data)
    codes = model.predict(x, batch_size=1024, verbose=0)["code_mean"]
    _write_rows(args.out, codes, [f"code_{i}" for i in range(codes.shape[1])])


def _score(args):
    import numpy as np
    from tfp_vae.runs import load_run
    config, model = load_run(args.run_dir)
    x = _read(args, config).values
    names = ("elbo", "reconstruction_log_prob", "kl")
    scores = model.score_in_batches(x, source=args.data)
    _warn_of_empty_rows(args.data, x, "with nothing to score, each has elbo -kl")
    columns = np.stack([scores[name] for name in names], axis=1)
    _write_rows(args.out, columns, list(names))


def _impute(args):
    import numpy as np
    from tfp_vae.data import expand_paths
    from tfp_vae.runs import load_config, load_imputer
    config = load_config(args.run_dir)
    if not config.allow_missing:
        raise TfpVaeError(f"{args.run_dir}: trained without --allow-missing, so it cannot fill gaps; train with "
                          "--allow-missing")
    if args.draws and not args.out.endswith(".npy"):
        raise TfpVaeError(f"{args.out}: --draws writes an array [draws, rows, columns]: use a .npy file")
    imputer = load_imputer(args.run_dir)
    x = _read(args, config).values
    imputer.check_input(x, source=args.data)
    if args.draws:
        _require_memory(args.draws * x.size, f"--draws {args.draws} of {len(x)} rows of {x.shape[1]} columns")
    _warn_of_empty_rows(args.data, x, "each is filled with the model's mean of every column")
    filled, _, *draws = imputer.impute(x, draws=args.draws, seed=args.seed)
    _refuse_overflowed_fills(args.data, config.feature_names, filled, *draws)
    if draws:
        _write_rows(args.out, draws[0], None)
    elif args.out.endswith(".csv") and all(path.endswith(".csv") for path in expand_paths(args.data)):
        _write_filled_csv(args.out, args.data, _columns(args, config), x, filled)
    else:  # numbers only: observed cells as read (float32, the numbers the model saw), in their shortest text
        _write_rows(args.out, np.where(np.isnan(x), filled, x),
                    config.feature_names or [str(i) for i in range(x.shape[1])], shortest=True)


def _warn_of_empty_rows(data: str, x, what_follows: str) -> None:
    """A warning, where rows of DATA have no observed cell (every cell missing), that names the first."""
    import numpy as np
    empty = np.flatnonzero(np.isnan(x).all(axis=1))
    if len(empty):
        print(f"warning: {data}: {len(empty)} row(s) have no observed cell (the first: data row {empty[0] + 1}); "
              f"{what_follows}", file=sys.stderr)


def _refuse_overflowed_fills(data: str, names, filled, draws=None) -> None:
    """A `TfpVaeError` at the first cell whose fill (or any draw) is inf: beyond float32, a model's answer to
    observed values far outside the rows it was trained on."""
    import numpy as np
    from tfp_vae.data import first_cell
    cell = first_cell(np.isinf(filled) | (np.isinf(draws).any(axis=0) if draws is not None else False))
    if cell:
        row, column = cell
        raise TfpVaeError(f"{data}: data row {row + 1}, column {names[column] if names else column!r}: the fill "
                          "passes float32's range; the row's observed values lie far beyond the training rows'")


def _write_filled_csv(path: str, data: str, columns, x, filled) -> None:
    """DATA's CSV again, every row and column, each cell as written but the model's missing ones, filled (the
    shortest text of their float32 value): identifiers and columns the model does not use stay beside the fills."""
    import csv
    import io
    import itertools
    import numpy as np
    from tfp_vae.data import csv_data_rows, csv_header, csv_lines, expand_paths, select_columns
    first = expand_paths(data)[0]
    names, preamble = csv_header(first)
    selected = select_columns(names, columns, first)

    def write(file):
        text = io.TextIOWrapper(file, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        lines = csv_lines(first)
        writer.writerows(row for _, row in itertools.islice(lines, preamble))  # comments and header as read
        lines.close()
        try:
            for row, values, fills in zip(csv_data_rows(data), x, filled, strict=True):
                for column, value, fill in zip(selected, values, fills):
                    if np.isnan(value):
                        row[column] = _shortest(fill)
                writer.writerow(row)
        except ValueError:  # its text is read again to be copied: a file rewritten meanwhile has other rows
            raise TfpVaeError(f"{data}: its rows changed while they were being filled; run impute again") from None
        text.flush()
        text.detach()
    _write_through_staging(path, write)


def _report(args):
    from tfp_vae.report import write_report
    from tfp_vae.runs import load_config
    rows = _read(args, load_config(args.run_dir)).values if args.data is not None else None
    print(write_report(args.run_dir, args.out, rows))


def _sample(args):
    from tfp_vae.runs import load_run
    config, model = load_run(args.run_dir)
    _require_memory(args.num_samples * model.chunk_width, f"-n {args.num_samples} rows")
    rows = model.sample(args.num_samples, args.seed).numpy()
    _write_rows(args.out, rows, config.feature_names or [str(i) for i in range(rows.shape[1])])


def _require_memory(numbers: int, request: str) -> None:
    """Refuses a request whose float32 results, held a few times over while they are made, exceed the memory
    available now: past it the kernel kills the process without a word."""
    available = available_memory()
    needed = numbers * 4 * RESULT_COPIES
    if available is not None and needed > available:
        raise TfpVaeError(f"{request} would take about {needed / 2**30:.1f} GiB of memory; "
                          f"{available / 2**30:.1f} GiB is available: ask for fewer")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); None where it cannot be told."""
    try:
        with open("/proc/meminfo") as file:
            return next(int(line.split()[1]) * 1024 for line in file if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _demo(args):
    from tfp_vae.demo import run_demo
    run_demo(args.out, epochs=args.epochs, verbose=0 if args.quiet else 1)


COMMANDS = {"train": _train, "evaluate": _evaluate, "export": _export, "encode": _encode, "score": _score,
            "sample": _sample, "impute": _impute, "report": _report, "demo": _demo}


# Library arguments that messages name, and the flags they are given by here.
FLAGS = {name: "--" + name.replace("_", "-") for name in
         [field.name for field in dataclasses.fields(Config)
          if field.name not in ("input_size", "feature_names", "passes_per_epoch", "validation_fold",
                                "integer_columns")]
         + ["drop_nonfinite", "resume", "worker_timeout"]}
FLAGS["run_dir"] = "--out"


def in_flags(message: str) -> str:
    """A library message in the command line's words: `drop_nonfinite=True` -> `--drop-nonfinite`, and so on."""
    names = "|".join(sorted(FLAGS, key=len, reverse=True))
    message = re.sub(rf"\b({names})=True\b", lambda match: FLAGS[match[1]], message)
    message = re.sub(rf"\b({names})='([^']*)'", lambda match: f"{FLAGS[match[1]]} {match[2]}", message)
    message = re.sub(rf"\b({names})=(\d+)\b", lambda match: f"{FLAGS[match[1]]} {match[2]}", message)
    # A one-word name is also an ordinary word ("model"): it is a flag where a setting's check names it.
    return re.sub(rf"\b({names})\b(?!=)( must be)?",
                  lambda match: (FLAGS[match[1]] if "_" in match[1] or match[2] else match[1]) + (match[2] or ""),
                  message)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return _run(args)
    except KeyboardInterrupt:  # at any point, TensorFlow's start-up included
        print("interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    try:
        _preflight(args)
    except TfpVaeError as error:
        print(f"error: {in_flags(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    start_tensorflow_quietly(initialize_devices="TF_CONFIG" not in os.environ)
    import tensorflow as tf
    try:
        COMMANDS[args.command](args)
    except TfpVaeError as error:
        print(f"error: {in_flags(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # a full disk, a read-only folder, a path that vanished
        where = error.filename or getattr(args, "out", None) or getattr(args, "export_base", None)
        print(f"error: {where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as error:
        print(f"error: {tensorflow_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"error: out of memory in {args.command}; ask for less at a time", file=sys.stderr)
        return EXIT_USAGE
    return 0

if __name__ == "__main__":
    sys.exit(main())
