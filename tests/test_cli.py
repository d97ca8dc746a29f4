"""The command line, through its real entry point, on real files: good runs and every kind of bad input."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfp_vae.cli import main

FAST = ["--select", "none", "--epochs", "2", "--hidden", "8", "--quiet"]


@pytest.fixture
def csv_file(tmp_path, rng):
    x = rng.normal(size=(120, 3)) * [1e-3, 1.0, 1e5] + [0.0, 1e4, 0.0]
    path = tmp_path / "data.csv"
    np.savetxt(path, x, delimiter=",", header="tiny,offset,huge", comments="")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)) * [1e-3, 1.0, 1e5] + [0.0, 1e4, 0.0]
    np.savetxt(folder / "data.csv", x, delimiter=",", header="tiny,offset,huge", comments="")
    assert main(["train", str(folder / "data.csv"), "--out", str(folder / "run"), *FAST]) == 0
    return folder / "run"


def fails(capsys, argv, message):
    """Runs the CLI, expects exit 2 and one `error:` line that contains `message`."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    return err[0]


def test_train_writes_a_complete_run(run_dir):
    assert {"config.json", "model.keras", "history.csv", "history.json", "logs"} <= set(os.listdir(run_dir))
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["loss"]) == 2 and "val_loss" in history
    config = json.loads((run_dir / "config.json").read_text())
    assert config["feature_names"] == ["tiny", "offset", "huge"] and config["input_size"] == 3
    assert os.listdir(run_dir / "logs" / "train")


def test_evaluate_prints_one_json_object(run_dir, capsys):
    assert main(["evaluate", str(run_dir), str(run_dir.parent / "data.csv"), "--samples", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"elbo", "log_likelihood", "log_likelihood_stderr", "reconstruction_nll", "kl", "mse", "n"} <= set(metrics)
    assert metrics["n"] == 120 and metrics["log_likelihood"] >= metrics["elbo"] - 1e-3
    assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))


def test_export_encode_score_sample(run_dir, tmp_path, capsys):
    data = run_dir.parent / "data.csv"
    assert main(["export", str(run_dir), str(tmp_path / "exports")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "exports" / "1")
    assert os.path.exists(tmp_path / "exports" / "1" / "saved_model.pb")
    assert main(["encode", str(run_dir), str(data), "--out", str(tmp_path / "codes.csv")]) == 0
    codes = np.loadtxt(tmp_path / "codes.csv", delimiter=",", skiprows=1)
    assert codes.shape == (120, 2)
    assert main(["score", str(run_dir), str(data), "--out", str(tmp_path / "scores.npy")]) == 0
    scores = np.load(tmp_path / "scores.npy")
    assert scores.shape == (120, 3) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:, 0], scores[:, 1] - scores[:, 2], rtol=1e-4, atol=1e-3)
    assert main(["sample", str(run_dir), "-n", "7", "--out", str(tmp_path / "samples.csv"), "--seed", "3"]) == 0
    lines = (tmp_path / "samples.csv").read_text().splitlines()
    assert lines[0] == "tiny,offset,huge" and len(lines) == 8


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("a,b,c\n", "header only"),
    ("a,b,c\n1,2,3\n4,x,6\n", "line 3, column 'b': non-numeric value 'x'"),
    ("day,a,b\n2020-01-01,1,NA\n", "line 2, column 'day': non-numeric value '2020-01-01'; read only the numeric "
                                   "columns with --columns a,b"),
    ("a,b,c\n1,2,3\n4,,6\n", "missing cell: blank, NA or NaN, at line 3, column 'b'"),
    ("a,b,c\n1,2,3\n4,nan,6\n", "missing cell: blank, NA or NaN, at line 3, column 'b'"),
    ("a,b,c\n1,2,3\n4,5,inf\n", "infinite value inf at line 3, column 'c'"),
    ("a,b,c\n1,2,3\n4,5\n", "line 3 has 2 cells, expected 3"),
    ("a,b,c\n1,2,3\n4,5,1e39\n", "value 1e+39 at line 3, column 'c' is too large for float32"),
    ("1,2,3\n4,5,6\n", "too few to train"),
    ("a;b;c\n1;2;3\n", "the file seems separated by ';': save it with commas"),
    ("a,b,c\n1,2,3\n".encode("utf-16"), "cannot read: it is UTF-16 text; save it as UTF-8"),
    (gzip.compress(b"a,b,c\n1,2,3\n"), "cannot read: it is compressed (gzip); decompress it first"),
])
def test_bad_csv_is_one_clear_error_and_no_output(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(capsys, ["train", path, "--out", tmp_path / "run", *FAST], message)
    assert not (tmp_path / "run").exists()


def test_missing_unreadable_and_unsupported_files(tmp_path, capsys):
    fails(capsys, ["train", tmp_path / "nope.csv", "--out", tmp_path / "run"], "nope.csv: no such file")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    fails(capsys, ["train", tmp_path / "binary.csv", "--out", tmp_path / "run"], "binary.csv: cannot read")
    (tmp_path / "data.txt").write_text("1,2\n")
    fails(capsys, ["train", tmp_path / "data.txt", "--out", tmp_path / "run"], "unsupported file type")
    fails(capsys, ["train", tmp_path / "part-*.csv", "--out", tmp_path / "run"], "no file matches")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    fails(capsys, ["train", tmp_path / "cube.npy", "--out", tmp_path / "run"], "got shape (2, 2, 2)")
    assert not (tmp_path / "run").exists()


def test_drop_nonfinite_skips_and_reports(tmp_path, capsys, rng):
    x = rng.normal(size=(40, 2))
    x[[3, 9], 1] = np.nan
    np.savetxt(tmp_path / "holes.csv", x, delimiter=",")
    assert main(["train", str(tmp_path / "holes.csv"), "--out", str(tmp_path / "run"), *FAST, "--drop-nonfinite"]) == 0
    assert "dropped 2 row(s)" in capsys.readouterr().err


def test_constant_column_trains_with_a_warning(tmp_path, capsys, rng):
    x = rng.normal(size=(40, 3))
    x[:, 1] = 5.0
    np.savetxt(tmp_path / "flat.csv", x, delimiter=",", header="dose,batch,weight", comments="")
    assert main(["train", str(tmp_path / "flat.csv"), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert "warning: constant column(s) 1 'batch' (to float32's" in capsys.readouterr().err


def test_columns_by_name_and_index(tmp_path, csv_file, capsys):
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), *FAST, "--columns", "huge,0"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["feature_names"] == ["huge", "tiny"]
    fails(capsys, ["train", csv_file, "--out", tmp_path / "run2", "--columns", "weight"], "no column 'weight'")


def test_wrong_width_not_a_run_and_overwrites(run_dir, tmp_path, capsys, rng):
    np.save(tmp_path / "wide.npy", rng.normal(size=(5, 4)))
    for command in ("evaluate", "encode", "score"):
        extra = [] if command == "evaluate" else ["--out", tmp_path / "out.csv"]
        fails(capsys, [command, run_dir, tmp_path / "wide.npy", *extra], "expected 3 features per row")
    assert not (tmp_path / "out.csv").exists()
    fails(capsys, ["evaluate", tmp_path, tmp_path / "wide.npy"], "not a tfp-vae run folder")
    fails(capsys, ["export", tmp_path, tmp_path / "exports"], "not a tfp-vae run folder")
    fails(capsys, ["train", run_dir.parent / "data.csv", "--out", run_dir], "already holds a run; pass --resume")
    fails(capsys, ["train", run_dir.parent / "data.csv", "--out", run_dir, "--resume"], "already finished")
    assert main(["export", str(run_dir), str(tmp_path / "exports"), "--version", "5"]) == 0
    fails(capsys, ["export", run_dir, tmp_path / "exports", "--version", "5"], "version 5 already exists")


def test_nan_loss_stops_cleanly_keeping_good_weights(tmp_path, capsys, rng):
    np.savetxt(tmp_path / "huge.csv", rng.normal(size=(50, 3)) * 1e20, delimiter=",")
    message = fails(capsys, ["train", tmp_path / "huge.csv", "--out", tmp_path / "run", "--model", "question",
                             "--epochs", "3", "--quiet"], "stopped being finite")
    assert "--learning-rate" in message and "kept the initial weights" in message
    assert (tmp_path / "run" / "model.keras").exists()


def test_console_script_exit_code_and_stderr(tmp_path):
    completed = subprocess.run(["tfp-vae", "evaluate", str(tmp_path), str(tmp_path / "x.csv")],
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: {tmp_path}: not a tfp-vae run folder (no config.json)"
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_resume_after_kill_finishes_the_same_epochs(tmp_path, rng):
    x = rng.normal(size=(20000, 4))
    np.save(tmp_path / "big.npy", x)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tfp_vae.cli", "train", str(tmp_path / "big.npy"), "--out", str(run),
               "--select", "none", "--epochs", "6", "--batch-size", "16", "--hidden", "8", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        history = run / "history.csv"
        if history.exists() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be interrupted"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = len((run / "history.csv").read_text().splitlines()) - 1
    assert 2 <= finished_before < 6 and not (run / "model.keras").exists()
    completed = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 6


def test_early_stopping_keeps_the_best_epoch_and_needs_validation(tmp_path, csv_file, capsys):
    fails(capsys, ["train", csv_file, "--out", tmp_path / "run", "--early-stopping-patience", "2",
                   "--validation-split", "0"], "early stopping watches the validation loss")
    assert not (tmp_path / "run").exists()
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), "--select", "none", "--epochs", "40",
                 "--hidden", "8",
                 "--learning-rate", "0.05", "--early-stopping-patience", "1", "--quiet"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["loss"]) < 40


@pytest.mark.parametrize("model", ["gaussian", "question"])
def test_early_stopping_waits_for_the_kl_warmup(tmp_path, csv_file, model):
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), "--model", model, "--select", "none",
                 "--epochs", "40",
                 "--hidden", "8", "--learning-rate", "0.05", "--early-stopping-patience", "1",
                 "--kl-warmup-epochs", "12", "--quiet"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert 13 <= len(history["loss"]) < 40


def test_whitened_run_trains_evaluates_and_refuses_the_question(tmp_path, csv_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(csv_file), "--out", str(out), "--normalization", "whiten", *FAST]) == 0
    assert json.loads((out / "config.json").read_text())["normalization"] == "whiten"
    capsys.readouterr()
    assert main(["evaluate", str(out), str(csv_file), "--samples", "20"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["log_likelihood"])
    fails(capsys, ["train", csv_file, "--out", tmp_path / "question", "--model", "question",
                   "--normalization", "whiten", *FAST], "normalization applies to the gaussian model")


@pytest.mark.own_process
def test_demo_trains_both_models_reports_and_exports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "3"]) == 0
    printed = capsys.readouterr().out
    for row in ("| question |", "| question, best fixed sigma |", "| gaussian, chosen by the data |", "| gaussian |",
                "| gaussian, whitened |", "| whiten-linear-shared-k8 |"):
        assert row in printed
    assert "gaussian, whitened: 3 epochs, held-out log p(x)" in printed and "\nchose " in printed
    assert len(printed.splitlines()) < 32
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"question", "question, best fixed sigma", "gaussian, chosen by the data",
                                       "gaussian", "gaussian, whitened"}
    assert os.path.exists(out / "gaussian-whitened" / "model.keras")
    assert np.isfinite(results["results"]["gaussian"]["log_likelihood"])
    assert os.path.exists(os.path.join(results["export"], "saved_model.pb"))
    fails(capsys, ["demo", "--out", str(out), "--epochs", "3", "--quiet"],
          "exists and is not an empty folder; choose another --out")


@pytest.mark.own_process
def test_train_with_no_model_flags_chooses_among_candidates_and_says_which(tmp_path, csv_file, capsys):
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), "--epochs", "3", "--kl-warmup-epochs", "1",
                 "--early-stopping-patience", "1", "--hidden", "8", "--normalization", "whiten", "--selection-folds", "1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| name |" in out and "| whiten-8-shared-k3 |" in out
    assert re.search(r"\nchose (yeo_johnson-|log-)?whiten-8-", out)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["select"] == "auto" and config["normalization"] == "whiten" and config["hidden"] == [8]
    assert (config["selection_folds"], config["validation_split"]) == (1, 0.25)  # 120 rows: else 4 folds
    # header + 6 candidates: the log floor among them, as the column 'offset' is positive
    assert len((tmp_path / "run" / "candidates.csv").read_text().splitlines()) == 7
    assert "\nlog-whiten-8-shared-k3," in (tmp_path / "run" / "candidates.csv").read_text()
    assert main(["evaluate", str(tmp_path / "run"), str(csv_file), "--samples", "10"]) == 0


def test_library_messages_name_the_command_lines_flags(tmp_path, csv_file, capsys):
    fails(capsys, ["train", csv_file, "--out", tmp_path / "run", "--strategy", "multiworker"],
          "pass --select none to train it with --strategy multiworker")


def test_tensorboard_reads_every_metric_of_a_run(run_dir):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for split, prefix in (("train", ""), ("validation", "val_")):
        events = EventAccumulator(str(run_dir / "logs" / split))
        events.Reload()
        tags = set(events.Tags()["tensors"])
        assert {f"epoch_{name}" for name in ("loss", "reconstruction_loss", "kl_loss", "mse")} <= tags, (split, tags)
        history = json.loads((run_dir / "history.json").read_text())
        values = [float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors("epoch_loss")]
        np.testing.assert_allclose(values, history[prefix + "loss"], rtol=1e-6)


def test_help_shows_defaults_and_an_example_and_version_answers(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip().startswith("tfp-vae 0.")
    for command, shown in (("train", ["(default: 64)", "(default: auto)", "example:", "tfp-vae train "]),
                           ("evaluate", ["(default: 1000)", "tfp-vae evaluate "]),
                           ("demo", ["(default: 150 for the fixed models", "tfp-vae demo "])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        printed = " ".join(capsys.readouterr().out.split())  # wherever the help's lines wrap
        assert all(text in printed for text in shown), (command, printed)


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "seed must be an integer from 0 to 2147483647"),
    (["--seed", str(2**32)], "seed must be an integer from 0 to 2147483647"),
    (["--kl-warmup-epochs", "-5"], "--kl-warmup-epochs must be at least 0"),
    (["--early-stopping-patience", "-1"], "--early-stopping-patience must be at least 0"),
    (["--code-size", "100000"], "--code-size must be at most the number of features (3)"),
    (["--kl-weight", "-1"], "--kl-weight must be finite and not negative"),
    (["--kl-weight", "nan"], "--kl-weight must be finite and not negative"),
    (["--kl-weight", "inf"], "--kl-weight must be finite and not negative"),
    (["--learning-rate", "inf"], "--learning-rate must be positive and finite"),
    (["--hidden", "8,0"], "layer widths must be positive"),
    (["--epochs", "0"], "--epochs 0 trains nothing, which leaves a model only where the untrained one is the Gaussian "
                        "of the rows: a linear model (no hidden layers) with --decoder-scale shared"),
    (["--epochs", "-1"], "--epochs must be at least 0"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, csv_file, capsys, flags, message):
    fails(capsys, ["train", csv_file, "--out", tmp_path / "run", "--select", "none", *flags], message)
    assert not (tmp_path / "run").exists()


def test_bad_counts_and_versions_are_usage_errors(run_dir, tmp_path, capsys):
    fails(capsys, ["evaluate", run_dir, run_dir.parent / "data.csv", "--samples", "0"],
          "argument --samples: expected an integer from 1")
    fails(capsys, ["export", run_dir, tmp_path / "exports", "--version", "99999999999999999999"],
          "argument --version: expected an integer from 0 to 9223372036854775807")
    fails(capsys, ["sample", run_dir, "-n", "0", "--out", tmp_path / "x.csv"], "expected an integer from 1")
    assert not (tmp_path / "exports").exists() and not (tmp_path / "x.csv").exists()


def test_resume_with_different_flags_names_each_conflict(run_dir, tmp_path, capsys):
    import shutil
    interrupted = tmp_path / "run"
    shutil.copytree(run_dir, interrupted)
    (interrupted / "model.keras").unlink()
    data = run_dir.parent / "data.csv"
    message = fails(capsys, ["train", data, "--out", interrupted, "--resume", "--epochs", "9", "--batch-size", "8"],
                    "--resume continues the run as it was set up")
    assert "--epochs 9 (the run has 2)" in message and "--batch-size 8 (the run has 64)" in message


def test_an_output_that_is_an_input_is_refused(run_dir, tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_bytes((run_dir.parent / "data.csv").read_bytes())
    before = data.read_bytes()
    fails(capsys, ["score", run_dir, data, "--out", data], "is the data being read")
    assert data.read_bytes() == before


def test_exports_and_outputs_get_the_umasks_permissions(run_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["export", str(run_dir), str(tmp_path / "exports")]) == 0
        assert main(["encode", str(run_dir), str(run_dir.parent / "data.csv"), "--out", str(tmp_path / "codes.csv")]) == 0
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "exports" / "1").st_mode & 0o777) == "0o755"
    assert oct(os.stat(tmp_path / "exports" / "1" / "saved_model.pb").st_mode & 0o777) == "0o644"
    assert oct(os.stat(tmp_path / "codes.csv").st_mode & 0o777) == "0o644"


def test_an_export_killed_midway_is_cleaned_and_racing_exports_take_successive_versions(run_dir, tmp_path,
                                                                                       monkeypatch):
    from tfp_vae import export
    from tfp_vae.runs import load_run
    base = tmp_path / "exports"
    (base / ".tmp-999999999-abc" / "variables").mkdir(parents=True)  # no such process: a kill -9 left it
    assert export.export_saved_model(load_run(run_dir)[1], base) == str(base / "1")
    assert sorted(os.listdir(base)) == ["1"]
    racer = base / ".tmp-racer"
    racer.mkdir()
    (racer / "saved_model.pb").write_bytes(b"x")
    answers = iter([1, 2])  # the racer counted the versions before the first export landed
    monkeypatch.setattr(export, "next_version", lambda export_base: next(answers))
    assert export.rename_into_place(str(racer), str(base), None) == str(base / "2")
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_validation_split_zero_trains_and_writes_its_history(tmp_path, csv_file):
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), "--select", "none", "--validation-split", "0",
                 "--epochs", "2", "--hidden", "8", "--quiet"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["loss"]) == 2 and not any(name.startswith("val_") for name in history)


def test_a_full_disk_is_one_error_line_and_leaves_nothing(run_dir, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))
    monkeypatch.setattr(tempfile, "mkstemp", full)
    monkeypatch.setattr(tempfile, "mkdtemp", full)
    fails(capsys, ["encode", run_dir, run_dir.parent / "data.csv", "--out", tmp_path / "codes.csv"],
          f"{tmp_path / 'codes.csv'}: cannot write (No space left on device)")
    fails(capsys, ["export", run_dir, tmp_path / "exports"], "No space left on device")
    assert sorted(os.listdir(tmp_path)) in ([], ["exports"]) and not os.listdir(tmp_path / "exports")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_a_broken_model_file_is_one_error_line(run_dir, tmp_path, capsys, content):
    import shutil
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "model.keras").write_bytes(content)
    fails(capsys, ["evaluate", broken, run_dir.parent / "data.csv"], "model.keras: unreadable model file")


def test_evaluate_prints_standard_json_only():
    from tfp_vae.cli import standard_json
    assert json.dumps(standard_json({"mse": float("inf"), "pit": [0.5, float("nan")], "n": 3}), allow_nan=False) == \
        '{"mse": null, "pit": [0.5, null], "n": 3}'


def test_runs_record_anomaly_thresholds_that_evaluate_prints_and_the_export_carries(run_dir, tmp_path, capsys):
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    quantiles = thresholds["elbo_quantiles"]
    assert list(quantiles) == ["0.001", "0.01", "0.05"] and quantiles["0.001"] <= quantiles["0.01"] <= quantiles["0.05"]
    assert thresholds["validation_rows"] > 0
    assert main(["evaluate", str(run_dir), str(run_dir.parent / "data.csv"), "--samples", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["elbo_thresholds"] == quantiles
    assert main(["export", str(run_dir), str(tmp_path / "exports")]) == 0
    carried = json.loads((tmp_path / "exports" / "1" / "assets.extra" / "thresholds.json").read_text())
    assert carried == thresholds


PREFLIGHT = """
import sys
from tfp_vae.cli import main
code = main(sys.argv[1:])
print(code, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("argv, message", [
    (["train", "missing.csv", "--out", "run"], "missing.csv: no such file"),
    (["train", "{data}", "--out", "run", "--seed", "-3"], "--seed must be an integer from 0"),
    (["train", "{data}", "--out", "{run}"], "already holds a run"),
    (["train", "{data}", "--out", "run", "--columns", "nope"], "no column 'nope'"),
    (["evaluate", "not-a-run", "{data}"], "not-a-run: not a tfp-vae run folder"),
    (["encode", "{run}", "{data}", "--out", "codes.txt"], "codes.txt: output must end in .csv or .npy"),
    (["score", "{run}", "missing.csv", "--out", "s.csv"], "missing.csv: no such file"),
    (["sample", "{run}", "-n", "3", "--out", "nowhere/s.csv"], "folder"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_mistakes_are_answered_before_tensorflow_starts(run_dir, tmp_path, argv, message):
    argv = [a.format(data=run_dir.parent / "data.csv", run=run_dir) for a in argv]
    completed = subprocess.run([sys.executable, "-c", PREFLIGHT, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert completed.stdout.split() == ["2", "False"], completed.stdout + completed.stderr
    assert completed.stderr.count("\n") == 1 and message in completed.stderr, completed.stderr


def test_the_library_starts_tensorflow_quietly():
    program = "from tfp_vae import GaussianVAE; GaussianVAE(3, hidden=(4,))"
    env = {name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")}
    quiet = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, check=True)
    assert quiet.stderr == "", quiet.stderr
    chosen = subprocess.run([sys.executable, "-c", "import tfp_vae, sys; tfp_vae.Config; "
                             "print('tensorflow' in sys.modules)"], capture_output=True, text=True, env=env, check=True)
    assert chosen.stdout.strip() == "False"  # a TensorFlow-free name loads no TensorFlow


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "{run}", "{data}", "--seed", "-5"], "argument --seed: expected an integer from 0 to 2147483647"),
    (["sample", "{run}", "-n", "3", "--out", "{out}/s.csv", "--seed", str(2**31)], "argument --seed: expected an "
     "integer from 0 to 2147483647"),
    (["evaluate", "{run}", "{data}", "--samples", "10000000"], "argument --samples: expected an integer from 1 to 1000000"),
    (["train", "{data}", "--out", "{out}/run", "--worker-timeout", "nan"], "expected a positive, finite number of seconds"),
    (["train", "{data}", "--out", "{out}/run", "--worker-timeout", "-1"], "expected a positive, finite number of seconds"),
    (["train", "{data}", "--out", "{out}/run", "--columns", ","], "--columns must be a non-empty list of names or indices"),
    (["train", "{data}", "--out", "{out}/run", "--epochs", "3", "--kl-warmup-epochs", "5"],
     "--kl-warmup-epochs must be at most the number of epochs (3), got 5"),
    (["train", "{data}", "--out", "{out}/run", "--selection-folds", "0"], "--selection-folds must be at least 1, got 0"),
    (["train", "{data}", "--out", "{out}/run", "--selection-folds", "3", "--validation-split", "0.5"],
     "3 validation folds of --validation-split 0.5 would overlap"),
    (["evaluate", "{data}", "{data}"], "data.csv: not a tfp-vae run folder"),
    (["evaluate", "{run}", "{data}", "--columns", "huge,offset,tiny"], "columns ['huge', 'offset', 'tiny'] differ from "
     "the ['tiny', 'offset', 'huge'] the model was trained on; pick them in that order with --columns tiny,offset,huge"),
    (["demo", "--out", "{run}"], "exists and is not an empty folder; choose another --out"),
], ids=lambda value: "-".join(value[:1] + value[-2:]) if isinstance(value, list) else None)
def test_more_mistakes_are_one_error_line_and_write_nothing(run_dir, tmp_path, capsys, argv, message):
    fails(capsys, [a.format(data=run_dir.parent / "data.csv", run=run_dir, out=tmp_path) for a in argv], message)
    assert os.listdir(tmp_path) == []


def test_a_file_without_a_column_the_model_knows_names_it_and_suggests_no_selection(run_dir, tmp_path, capsys):
    np.savetxt(tmp_path / "narrow.csv", np.ones([4, 3]), delimiter=",", header="tiny,huge,other", comments="")
    assert main(["evaluate", str(run_dir), str(tmp_path / "narrow.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "narrow.csv: has no column 'offset' (1 of the 3 the model was trained on)")


def test_broken_run_files_are_one_error_line_before_any_work(run_dir, tmp_path, capsys):
    import shutil
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "thresholds.json").write_text("{not json")
    fails(capsys, ["evaluate", broken, run_dir.parent / "data.csv"], "thresholds.json: unreadable anomaly thresholds")
    fails(capsys, ["export", broken, tmp_path / "exports"], "thresholds.json: unreadable anomaly thresholds")
    (broken / "thresholds.json").unlink()
    (broken / "history.csv").write_text("epoch,loss\n0,abc\n")
    fails(capsys, ["report", broken, "--out", tmp_path / "report"], "history.csv: unreadable training history")
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_one_column_trains_with_a_code_no_wider(tmp_path, rng):
    np.savetxt(tmp_path / "one.csv", rng.normal(size=(40, 1)), delimiter=",", header="a", comments="")
    assert main(["train", str(tmp_path / "one.csv"), "--out", str(tmp_path / "run"), *FAST]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["code_size"] == 1


def test_tensorflow_errors_are_said_without_graph_node_and_op():
    import tensorflow as tf
    from tfp_vae.errors import tensorflow_message
    error = tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__Mul_device_/job:localhost/"
                                             "device:CPU:0}} OOM when allocating tensor with shape[9,2] [Op:Mul] "
                                             "name: \nmore")
    assert tensorflow_message(error) == "OOM when allocating tensor with shape[9,2]"


@pytest.fixture
def small_disk(tmp_path):
    """A real 200 KiB file system (tmpfs), where this machine lets the tests mount one; its size can be raised."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_disk_filling_up_mid_training_leaves_no_partial_checkpoint_and_resume_finishes(small_disk, csv_file,
                                                                                         capsys):
    run = small_disk / "run"
    argv = ["train", csv_file, "--out", run, "--select", "none", "--epochs", "30", "--hidden", "128,128",
            "--batch-size", "8", "--quiet"]
    fails(capsys, argv, f"{run / 'checkpoints'}: could not write a checkpoint (No space left on device)")
    assert not [folder for folder, _, _ in os.walk(run) if folder.endswith("_temp")]
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    assert main([str(a) for a in argv + ["--resume"]]) == 0
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 30


def test_a_full_disk_during_export_report_and_outputs_is_one_line_naming_the_target(run_dir, small_disk, capsys):
    (small_disk / "filler").write_bytes(b"x" * 190_000)
    fails(capsys, ["export", run_dir, small_disk / "exports"], f"{small_disk / 'exports' / '1'}: could not write the "
          "export (No space left on device)")
    fails(capsys, ["report", run_dir, "--out", small_disk / "report"], f"{small_disk / 'report'}: cannot write the "
          "report (No space left on device)")
    fails(capsys, ["sample", run_dir, "-n", "20000", "--out", small_disk / "rows.csv"], f"{small_disk / 'rows.csv'}: "
          "cannot write (No space left on device)")
    assert sorted(os.listdir(small_disk)) in (["filler"], ["exports", "filler"])
    assert not os.listdir(small_disk / "exports") if (small_disk / "exports").exists() else True


def test_staging_left_by_a_killed_writer_is_removed_by_the_next_one(run_dir, tmp_path):
    (tmp_path / ".tfp-vae-999999999-abc.csv").write_text("half")  # no such process: a kill -9 left them
    (tmp_path / ".tfp-vae-report-999999999-abc").mkdir()
    assert main(["score", str(run_dir), str(run_dir.parent / "data.csv"), "--out", str(tmp_path / "s.csv")]) == 0
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["report", "s.csv"]


def test_ctrl_c_while_tensorflow_starts_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    from tfp_vae import cli

    def interrupted(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "start_tensorflow_quietly", interrupted)
    assert main(["export", str(run_dir), str(tmp_path / "exports")]) == 130
    assert capsys.readouterr().err == "interrupted\n" and os.listdir(tmp_path) == []


def test_requests_larger_than_the_free_memory_are_refused_before_any_work(run_dir, tmp_path, capsys, monkeypatch):
    import tfp_vae.cli
    assert tfp_vae.cli.available_memory() > 0  # read on this machine
    monkeypatch.setattr(tfp_vae.cli, "available_memory", lambda: 2**30)
    fails(capsys, ["sample", run_dir, "-n", "100000000", "--out", tmp_path / "rows.npy"],
          "-n 100000000 rows would take about 3.4 GiB of memory; 1.0 GiB is available: ask for fewer")
    assert main(["sample", str(run_dir), "-n", "1000", "--out", str(tmp_path / "rows.npy")]) == 0
    assert os.listdir(tmp_path) == ["rows.npy"]


def test_a_npy_file_without_columns_is_refused(tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((5, 0)))
    fails(capsys, ["train", tmp_path / "empty.npy", "--out", tmp_path / "run"], "empty.npy: no columns of data")


def test_importance_samples_reach_the_trained_model(csv_file, tmp_path, capsys):
    from tfp_vae import load_run
    fails(capsys, ["train", csv_file, "--out", tmp_path / "zero", "--importance-samples", "0"],
          "--importance-samples must be at least 1, got 0")
    fails(capsys, ["train", csv_file, "--out", tmp_path / "both", "--importance-samples", "3", "--nll-beta", "0.5"],
          "--nll-beta reweighs the ELBO's likelihood term; --importance-samples > 1 trains on the importance-weighted")
    assert not (tmp_path / "zero").exists() and not (tmp_path / "both").exists()
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), *FAST, "--importance-samples", "3"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["importance_samples"] == 3
    assert load_run(tmp_path / "run")[1].importance_samples == 3


def test_em_prior_rows_reach_the_trained_model(csv_file, tmp_path, capsys):
    from tfp_vae import load_run
    fails(capsys, ["train", csv_file, "--out", tmp_path / "negative", "--em-prior-rows", "-1"],
          "--em-prior-rows must be finite and not negative (0: the maximum-likelihood fit), got -1.0")
    assert not (tmp_path / "negative").exists()
    assert main(["train", str(csv_file), "--out", str(tmp_path / "run"), *FAST, "--allow-missing",
                 "--normalization", "whiten", "--decoder-scale", "shared", "--em-prior-rows", "0"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["em_prior_rows"] == 0.0
    assert load_run(tmp_path / "run")[1].em_prior_rows == 0.0
