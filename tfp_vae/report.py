"""Pictures of a run: `write_report(run_dir, out_dir, data=None)` writes PNGs and an `index.html` that shows them.

- the loss terms per epoch (training, and validation where rows were held out);
- the validation ELBO per epoch of every candidate the model was chosen among,
  and their validation log-likelihoods (`candidates.csv`);
- each feature's decoder standard deviation beside its spread in the training rows;
- given `data`: the calibration (PIT histogram, coverage of the central 68% and
  95% of each feature) and a map of the codes (the first two code units).

Needs matplotlib (`pip install 'tfp-vae[examples]'`).
"""

import html
import os
import shutil

import numpy as np

from tfp_vae import runs
from tfp_vae.errors import TfpVaeError
from tfp_vae.files import give_usual_permissions, require_new_folder, staging_folder

LOSS_TERMS = (("loss", "loss (negative ELBO)"), ("reconstruction_loss", "distortion, -log p(x|z)"),
              ("kl_loss", "rate, KL(q(z|x) || p(z))"))
CODE_MAP_ROWS = 5000


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise TfpVaeError("the report draws with matplotlib: pip install 'tfp-vae[examples]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_report(run_dir, out_dir, data=None, num_samples: int = 200) -> str:
    """Writes the run's figures into `out_dir` (a new or empty folder) and returns the path of its index.html."""
    plt = _pyplot()
    run_dir, out_dir = os.fspath(run_dir), os.fspath(out_dir)
    require_new_folder(out_dir, "--out")
    config, model = runs.load_run(run_dir)
    # Drawn in a staging folder beside `out_dir` and renamed into place when whole: a failure leaves nothing.
    parent = os.path.dirname(os.path.abspath(out_dir))
    staging = None
    try:
        os.makedirs(parent, exist_ok=True)
        staging = staging_folder(parent, ".tfp-vae-report-")
        _write_figures(plt, run_dir, staging, config, model, data, num_samples)
        give_usual_permissions(staging)
        os.replace(staging, out_dir)
    except OSError as error:  # named for the folder asked for, not the staging folder beside it
        raise TfpVaeError(f"{out_dir}: cannot write the report ({error.strerror or error})") from None
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(out_dir, "index.html")


def _write_figures(plt, run_dir: str, out_dir: str, config, model, data, num_samples: int) -> None:
    figures = [_loss_terms(plt, run_dir, out_dir)]
    if os.path.exists(os.path.join(run_dir, runs.CANDIDATES_CSV)):
        figures.append(_candidates(plt, run_dir, out_dir))
    names = config.feature_names or [str(i) for i in range(model.input_size)]
    facts = {"model": config.model, "features": model.input_size, "code size": model.code_size}
    if data is not None:
        from tfp_vae.evaluation import evaluate
        rows = np.asarray(data, np.float32)
        metrics = evaluate(model, rows, num_samples=num_samples)
        facts.update({"rows scored": metrics["n"], "log-likelihood, nats per row": f"{metrics['log_likelihood']:.3f}",
                      "within 1 sigma (68%)": f"{metrics['coverage_1sigma']:.1%}",
                      "within 2 sigma (95%)": f"{metrics['coverage_2sigma']:.1%}"})
        outputs = model.predict(rows, batch_size=1024, verbose=0)
        figures.append(_sigma(plt, out_dir, names, np.nanstd(rows, axis=0), outputs["stddev"].mean(axis=0)))
        figures.append(_calibration(plt, out_dir, metrics))
        figures.append(_codes(plt, out_dir, outputs["code_mean"][:CODE_MAP_ROWS]))
    elif hasattr(model, "marginals"):  # at the prior's centre, against the training rows' spread
        _, stddev, _, _ = model.decoder_outputs(np.zeros([1, model.code_size], np.float32))
        spread = model.marginals.scale if model.transform != "none" else model.normalizer.scale
        figures.append(_sigma(plt, out_dir, names, spread.numpy(), stddev.numpy()[0]))
    _index(out_dir, run_dir, facts, figures)


def _save(plt, figure, out_dir: str, name: str, title: str, caption: str) -> dict:
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, name), dpi=100)
    plt.close(figure)
    return {"file": name, "title": title, "caption": caption}


def _loss_terms(plt, run_dir: str, out_dir: str) -> dict:
    history = runs.read_history(run_dir)
    figure, axes = plt.subplots(1, len(LOSS_TERMS), figsize=(13, 3.4))
    for axis, (term, label) in zip(axes, LOSS_TERMS):
        axis.plot(np.arange(1, len(history.get(term, [])) + 1), history.get(term, []), label="training rows")
        if f"val_{term}" in history:
            axis.plot(np.arange(1, len(history[f"val_{term}"]) + 1), history[f"val_{term}"], label="validation rows")
        axis.set(title=label, xlabel="epoch", ylabel="nats per row")
        axis.legend()
    return _save(plt, figure, out_dir, "loss_terms.png", "Loss terms per epoch",
                 "In nats of the raw data. The run's own model: for a chosen model, its last fit on every row.")


def _candidates(plt, run_dir: str, out_dir: str) -> dict:
    table = runs.read_candidates(run_dir)
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(13, 3.8))
    for index, row in enumerate(table):
        history = runs.read_history(runs.candidate_folder(run_dir, row["name"]))
        line = dict(color=f"C{index % 10}", lw=2.5 if row["chosen"] == "True" else 1.0)
        if "val_loss" in history:
            curves.plot(np.arange(1, len(history["val_loss"]) + 1), -np.asarray(history["val_loss"]),
                        label=row["name"], **line)
        elif row["epochs_run"] == "0":  # an untrained Gaussian: its ELBO is its log-likelihood
            curves.axhline(float(row["validation_log_likelihood"]), ls="--", label=f"{row['name']} (untrained)",
                           **line)
    curves.set(title="validation ELBO per epoch", xlabel="epoch", ylabel="nats per row")
    curves.legend(fontsize=7)
    colours = ["tab:green" if row["chosen"] == "True" else "tab:gray" for row in table]
    names = [row["name"] for row in table]
    if "validation_fill_rmse" in table[0]:
        bars.barh(names, [float(row["validation_fill_rmse"]) for row in table], color=colours)
        bars.set(title="fills of validation cells, chosen in green (shorter is better)",
                 xlabel="RMSE, column standard deviations")
        chosen_by = "the error of its fills of validation cells, each hidden in turn,"
    else:
        scores = np.array([float(row["validation_log_likelihood"]) for row in table])
        left = scores.min() - 0.1 * (np.ptp(scores) + 1.0)  # longer is better, whatever the sign
        bars.barh(names, scores - left, left=left, color=colours)
        bars.set(title="validation log-likelihood (IWAE), chosen in green", xlabel="nats per row")
        chosen_by = "the validation log-likelihood"
    bars.tick_params(axis="y", labelsize=7)
    return _save(plt, figure, out_dir, "candidates.png", "The model choice",
                 f"Every candidate's validation ELBO during training, and {chosen_by} it was chosen by: the "
                 "simplest within one standard error of the best (candidates.csv lists them simplest first).")


def _sigma(plt, out_dir: str, names, spread, stddev) -> dict:
    figure, axis = plt.subplots(figsize=(max(6.0, 0.35 * len(names)), 3.8))
    positions = np.arange(len(names))
    axis.bar(positions - 0.2, spread, width=0.4, label="feature's standard deviation")
    axis.bar(positions + 0.2, stddev, width=0.4, label="decoder's standard deviation")
    axis.set_yscale("log")
    axis.set_xticks(positions, names, rotation=90, fontsize=7)
    axis.set(title="noise the decoder leaves, against each feature's spread", ylabel="raw units")
    axis.legend()
    return _save(plt, figure, out_dir, "sigma.png", "Per-feature sigma",
                 "What the code does not explain, per feature, in raw units: the closer to the spread, the less "
                 "the code says about that feature.")


def _calibration(plt, out_dir: str, metrics: dict) -> dict:
    figure, (pit, coverage) = plt.subplots(1, 2, figsize=(11, 3.4))
    pit.bar(np.arange(10) / 10 + 0.05, metrics["pit_histogram"], width=0.09, color="tab:purple")
    pit.axhline(0.1, color="black", ls="--", lw=1, label="calibrated")
    pit.set(title="PIT histogram of the reconstructions", xlabel="predictive CDF at the data", ylabel="share")
    pit.legend()
    coverage.bar(["within 1 sigma", "within 2 sigma"], [metrics["coverage_1sigma"], metrics["coverage_2sigma"]])
    coverage.plot([-0.4, 0.4], [0.6827, 0.6827], color="black", ls="--")
    coverage.plot([0.6, 1.4], [0.9545, 0.9545], color="black", ls="--")
    coverage.set(title="interval coverage (dashed: calibrated)", ylim=(0, 1))
    return _save(plt, figure, out_dir, "calibration.png", "Calibration",
                 "Flat PIT bars and coverage on the dashed lines mean the predicted spread matches the errors.")


def _codes(plt, out_dir: str, codes: np.ndarray) -> dict:
    figure, axis = plt.subplots(figsize=(5, 4.3))
    second = codes[:, 1] if codes.shape[1] > 1 else np.zeros(len(codes))
    axis.scatter(codes[:, 0], second, s=6, alpha=0.5)
    axis.set(title="posterior means of the rows", xlabel="code unit 1", ylabel="code unit 2")
    return _save(plt, figure, out_dir, "codes.png", "The codes", "E[z|x] of each row given (at most 5,000).")


def _index(out_dir: str, run_dir: str, facts: dict, figures: list) -> None:
    rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in facts.items())
    sections = "".join(
        f'<section><h2>{html.escape(f["title"])}</h2><img src="{f["file"]}" alt="{html.escape(f["title"])}">'
        f'<p>{html.escape(f["caption"])}</p></section>' for f in figures)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tfp-vae run {html.escape(run_dir)}</title>"
            "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto}img{max-width:100%}"
            "th{text-align:left;padding-right:1em}</style></head><body>"
            f"<h1>Run {html.escape(run_dir)}</h1><table>{rows}</table>{sections}</body></html>")
    with open(os.path.join(out_dir, "index.html"), "w") as file:
        file.write(page)
