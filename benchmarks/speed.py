"""Training and serving speed of tfp_vae against hand-written TensorFlow, PyTorch and numpy.

    python benchmarks/speed.py [--repeats 3] [--baseline ROOT] [--out benchmarks/results/speed.md]

Training: D=64, hidden 256x2, K=16, batch 256, 20,000 rows, Adam. Each implementation runs in
fresh processes (`--repeats` of them, interleaved); each process times 5 epochs after a warm-up
epoch and reports its median; the table gives the median over processes, as examples per second
and as a ratio to `GaussianVAE.fit`. The same maths everywhere: full-covariance posterior,
learned sigma(z) floored at 1e-3, reparameterised single sample, analytic KL. PyTorch needs the
`[bench]` extra (torch==2.13.0, the CPU build); its programs are the fastest fair variants
(`speed/fit_torch.py`), and the report names the strongest peer and the ratio to it.

Serving: the exported SavedModel, loaded in a fresh process with TensorFlow only, against two
floors measured in the same process: an identity SavedModel signature (the runtime's call
overhead) and a numpy forward pass of the same weights; and against a hand-written export of the
same network without the in-graph normalisation and raw-unit outputs, as written (weights in
variables) and with its weights folded into constants as tfp_vae's export does.

`--baseline ROOT` also runs another checkout's tfp_vae (ROOT, e.g. a `git worktree` of an
earlier commit) in the same run, training and serving, and counts each export's ops per
signature: before and after a change, on one machine, in one run.

The programs live in `speed/`, one file each; this script runs them and writes the report.
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "speed")
ROOT = os.path.dirname(HERE)
FLOP_PER_EXAMPLE = 1.3e6
TFP_VAE = "tfp_vae GaussianVAE.fit"
sys.path.insert(0, PROGRAMS)
from common import BATCH, D, EPOCHS, HIDDEN, K, LARGE_CALLS, ROUNDS, ROWS, SMALL_CALLS  # noqa: E402


def run(program, *args):
    """Runs `speed/<program>` in a fresh process and returns what it reported."""
    completed = subprocess.run([sys.executable, os.path.join(PROGRAMS, program), *map(str, args)],
                               capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if completed.returncode != 0:
        raise RuntimeError(f"{program}: {completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def machine():
    import numpy as np
    import tensorflow as tf
    versions = [f"Python {platform.python_version()}", f"TensorFlow {tf.__version__}", f"numpy {np.__version__}"]
    try:
        import torch
        versions.append(f"PyTorch {torch.__version__}")
    except ImportError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mhz = next((float(line.split(":", 1)[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")), 0.0)
    return f"{os.cpu_count()} cores ({model}, {mhz / 1000:.2f} GHz), " + ", ".join(versions), mhz


def training_table(implementations: dict, repeats: int) -> dict:
    """Examples per second of each implementation: the median over `repeats` interleaved rounds of fresh processes."""
    samples = {name: [] for name in implementations}
    for _ in range(repeats):
        for name, (program, *args) in implementations.items():
            samples[name].append(run(program, *args))
    for name, values in samples.items():
        print(f"{name}: {statistics.median(values):,.0f} examples/s", file=sys.stderr, flush=True)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="ROOT", help="another checkout of tfp_vae to run beside this one")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "speed.md"))
    args = parser.parse_args(argv)
    implementations = {TFP_VAE: ("fit_tfp_vae.py", ROOT), "raw TF, tf.function": ("fit_raw_tf.py", "plain"),
                       "raw TF, tf.function + XLA": ("fit_raw_tf.py", "xla")}
    if args.baseline:
        implementations[f"{TFP_VAE}, baseline"] = ("fit_tfp_vae.py", os.path.abspath(args.baseline))
    if importlib.util.find_spec("torch"):
        implementations.update({"PyTorch eager": ("fit_torch.py", "eager"),
                                "PyTorch, torch.compile forward": ("fit_torch.py", "compile")})
    else:
        print("PyTorch not installed: pip install 'tfp-vae[bench]' to include it", file=sys.stderr)
    throughput = training_table(implementations, args.repeats)
    described, mhz = machine()
    peak = os.cpu_count() * 32 * mhz * 1e6  # two 256-bit FMA pipes: 32 float32 FLOP per cycle per core
    base = throughput[TFP_VAE]
    baseline_text = f" --baseline {args.baseline}" if args.baseline else ""
    lines = ["# Speed", "", f"`python benchmarks/speed.py --repeats {args.repeats}{baseline_text}` on {described}.", "",
             f"## Training (D={D}, hidden {HIDDEN}x2, K={K}, batch {BATCH}, {ROWS:,} rows; median of {args.repeats} "
             f"fresh processes x {EPOCHS} epochs)", "",
             "| implementation | examples/s | ratio to GaussianVAE.fit | share of peak FLOP/s |", "|---|---|---|---|"]
    for name, value in sorted(throughput.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {value:,.0f} | {value / base:.2f} | {value * FLOP_PER_EXAMPLE / peak:.1%} |")
    peers = {name: value for name, value in throughput.items() if not name.startswith(TFP_VAE)}
    strongest = max(peers, key=peers.get)
    lines += ["", f"Peak taken as {os.cpu_count()} cores x 32 float32 FLOP/cycle x {mhz / 1000:.2f} GHz = "
                  f"{peak / 1e9:.0f} GFLOP/s, at {FLOP_PER_EXAMPLE / 1e6:.1f} MFLOP per example (forward and backward).",
              f"Strongest peer: {strongest}, {peers[strongest]:,.0f} examples/s; GaussianVAE.fit runs at "
              f"{base / peers[strongest]:.2f}x it. Goal (tfp_vae the fastest): "
              f"{'met' if base >= peers[strongest] else 'NOT met'}."]
    with tempfile.TemporaryDirectory() as folder:
        roots = {"tfp_vae": ROOT, **({"tfp_vae, baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
        exports = {}
        for name, root in roots.items():
            os.makedirs(os.path.join(folder, name))
            exports[name] = run("export_tfp_vae.py", root, os.path.join(folder, name))
        identity, weights, hand, hand_frozen = run("write_floors.py", ROOT, exports["tfp_vae"]["model"], folder)
        artifacts = os.path.join(folder, "artifacts.json")
        with open(artifacts, "w") as file:
            json.dump({"exports": {name: paths["export"] for name, paths in exports.items()}, "identity": identity,
                       "weights": weights, "hand": hand, "hand_frozen": hand_frozen}, file)
        measured = run("serve.py", artifacts)
    serving, ops = measured["calls"], measured["ops"]
    floor, numpy_floor = serving["identity signature (floor)"], serving["numpy forward pass (floor)"]
    lines += ["", f"## Serving (fresh process, TensorFlow only; batch 1: {ROUNDS * SMALL_CALLS:,} calls, batch 1024: "
                  f"{ROUNDS * LARGE_CALLS} calls, interleaved in {ROUNDS} rounds)", "",
              "| call | batch 1 p50, us | batch 1 p99, us | batch 1024 rows/s |", "|---|---|---|---|"]
    for name, value in serving.items():
        lines.append(f"| {name} | {value['p50_us']:.0f} | {value['p99_us']:.0f} | {value['rows_per_s']:,.0f} |")
    ours, hand = serving["tfp_vae serving_default"], serving["hand-written export, no normalisation, weights as constants"]
    lines += ["",
              f"- batch 1: serving_default p50 is {ours['p50_us'] / floor['p50_us']:.2f}x the identity signature "
              f"(goal 1.5x: {'met' if ours['p50_us'] <= 1.5 * floor['p50_us'] else 'NOT met'}).",
              f"- batch 1024: {ours['rows_per_s'] / numpy_floor['rows_per_s']:.2f}x numpy's rows/s "
              f"(goal 1.3x: {'met' if ours['rows_per_s'] >= 1.3 * numpy_floor['rows_per_s'] else 'NOT met'}).",
              f"- normalisation and raw-unit outputs in the graph cost {ours['p50_us'] / hand['p50_us'] - 1:+.1%} at "
              f"batch 1 and {hand['rows_per_s'] / ours['rows_per_s'] - 1:+.1%} at batch 1024 against the hand-written "
              "export with its weights folded the same way (goal: at most 10%)."]
    signatures = sorted(ops["tfp_vae"])
    lines += ["", "## Ops per call, by signature (each signature's graph and the functions it calls)", "",
              "| export | " + " | ".join(signatures) + " |", "|---" * (len(signatures) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(counts.get(s, "-")) for s in signatures) + " |"
              for name, counts in ops.items()]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
