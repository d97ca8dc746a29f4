"""The command line against a script on small data: what the CLI's files, checks and per-epoch work cost.

    python benchmarks/cli_overhead.py [--repeats 3] [--out benchmarks/results/cli_overhead.md]

scikit-learn's diabetes table (442 rows x 10 columns, raw units), 150 epochs, batch 64, the same model
(2-d code, 64x64, standardised, learned sigma, 10% validation rows) three ways, each in fresh processes,
start-up included, interleaved: a Python script calling `GaussianVAE.fit`, `tfp-vae train` on a `.npy`
file and on a `.csv` file (`--select none`, which trains that one model). Goal: the CLI on the CSV within
1.2x of the script. Needs scikit-learn (the `[bench]` extra).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from sklearn.datasets import load_diabetes

from report import write_report

EPOCHS = 150
SCRIPT = f"""
import sys
import numpy as np
from tfp_vae import GaussianVAE
x = np.load(sys.argv[1])
held_out = np.arange(len(x)) % 10 == 0
model = GaussianVAE(x.shape[1], code_size=2, hidden=(64, 64), seed=0)
model.compile()
model.fit(x[~held_out], validation_data=(x[held_out],), epochs={EPOCHS}, batch_size=64, verbose=0)
"""


def seconds(command) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cli_overhead.md"))
    args = parser.parse_args(argv)
    x = load_diabetes(scaled=False).data.astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "x.npy"), x)
        np.savetxt(os.path.join(folder, "x.csv"), x, delimiter=",", fmt="%.9g")
        cli = [sys.executable, "-m", "tfp_vae.cli", "train"]
        flags = ["--select", "none", "--epochs", str(EPOCHS), "--quiet"]
        variants = {
            "script, GaussianVAE.fit": lambda i: [sys.executable, "-c", SCRIPT, os.path.join(folder, "x.npy")],
            "tfp-vae train, .npy": lambda i: [*cli, os.path.join(folder, "x.npy"), "--out",
                                              os.path.join(folder, f"npy-{i}"), *flags],
            "tfp-vae train, .csv": lambda i: [*cli, os.path.join(folder, "x.csv"), "--out",
                                              os.path.join(folder, f"csv-{i}"), *flags],
        }
        times = {name: [] for name in variants}
        for i in range(args.repeats):
            for name, command in variants.items():
                times[name].append(seconds(command(i)))
                print(f"{name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["script, GaussianVAE.fit"]
    lines = ["# The command line against a script, small data", "",
             f"`python benchmarks/cli_overhead.py --repeats {args.repeats}`: diabetes, 442 x 10, {EPOCHS} epochs, "
             f"{os.cpu_count()} cores; median wall time of {args.repeats} fresh processes, start-up included.", "",
             "| run | seconds | ratio to the script |", "|---|---|---|"]
    lines += [f"| {name} | {value:.1f} | {value / base:.2f} |" for name, value in median.items()]
    ratio = median["tfp-vae train, .csv"] / base
    lines += ["", f"Goal (the CLI on a small CSV within 1.2x of the script): {'met' if ratio <= 1.2 else 'NOT met'} "
                  f"({ratio:.2f}x)."]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
