"""Training from CSV streams: peak memory and time as the file grows tenfold.

    python benchmarks/streaming.py [--rows 100000] [--growth 10] [--out benchmarks/results/streaming.md]

Writes a CSV of `rows` x 32 columns and one `growth` times longer, trains one epoch on each with
`tfp-vae train` (in a fresh process each), and reports peak resident memory and wall time. The
goals: memory grows by under 20%, time grows about linearly (a ratio within 10-12x for tenfold).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from report import write_report

COLUMNS = 32
CHILD = r"""
import json, resource, sys, time
from tfp_vae.cli import main
start = time.perf_counter()
code = main(["train", sys.argv[1], "--out", sys.argv[2], "--select", "none", "--epochs", "1", "--batch-size", "1024",
            "--quiet"])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_csv(path: str, rows: int) -> int:
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(4, COLUMNS))
    with open(path, "w") as file:
        file.write(",".join(f"c{i}" for i in range(COLUMNS)) + "\n")
        for start in range(0, rows, 50_000):
            count = min(50_000, rows - start)
            block = rng.normal(size=(count, 4)) @ loadings + 0.1 * rng.normal(size=(count, COLUMNS))
            np.savetxt(file, block * np.geomspace(1e-3, 1e4, COLUMNS), delimiter=",", fmt="%.6g")
    return os.path.getsize(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--growth", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "streaming.md"))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for rows in (args.rows, args.rows * args.growth):
            path = os.path.join(folder, f"rows-{rows}.csv")
            size = write_csv(path, rows)
            completed = subprocess.run([sys.executable, "-c", CHILD, path, os.path.join(folder, f"run-{rows}")],
                                       capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            if result["code"] != 0:
                raise RuntimeError(completed.stderr[-2000:])
            results[rows] = {**result, "file_mib": size / 2**20}
            os.remove(path)
            print(f"{rows:,} rows: {results[rows]}", file=sys.stderr, flush=True)
    small, large = (results[r] for r in sorted(results))
    memory_growth = large["peak_mib"] / small["peak_mib"] - 1
    time_ratio = large["seconds"] / small["seconds"]
    lines = ["# Streaming from CSV", "",
             f"`python benchmarks/streaming.py --rows {args.rows} --growth {args.growth}`: one epoch of "
             f"`tfp-vae train` (validating pass, then tf.data), {COLUMNS} columns, {os.cpu_count()} cores.", "",
             "| rows | file, MiB | peak resident memory, MiB | wall time, s |", "|---|---|---|---|"]
    for rows in sorted(results):
        r = results[rows]
        lines.append(f"| {rows:,} | {r['file_mib']:.0f} | {r['peak_mib']:.0f} | {r['seconds']:.1f} |")
    lines += ["", f"- memory grows {memory_growth:+.1%} for {args.growth}x the rows "
                  f"(goal under 20%: {'met' if memory_growth < 0.2 else 'NOT met'})",
              f"- time grows {time_ratio:.1f}x (goal about linear, within 10-12x for tenfold: "
              f"{'met' if time_ratio <= 1.2 * args.growth else 'NOT met'})"]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
