"""What each model trained in one process leaves behind: memory maps and resident memory, with XLA and without.

    python benchmarks/process_memory.py [--models 40] [--out benchmarks/results/process_memory.md]

A model choice trains dozens of candidates in one process, and a notebook may run several. Each
setting runs in a fresh child process that builds, compiles and fits `--models` small networks
(10 features, 400 rows, one epoch, hidden 16, code 2; and, for the floor, a plain tf_keras network
of the same size) one after another, dropping each; the
process's memory maps (lines of /proc/self/maps) and resident memory are read after every tenth.
The growth per model is the slope between the tenth model and the last. Linux ends a process whose
maps reach `vm.max_map_count` (LLVM, compiling XLA's next model, cannot allocate); that is why
`compile` leaves XLA off past half of it (`tfp_vae.model.xla_has_room`).
"""

import argparse
import gc
import json
import os
import platform
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from report import write_report  # noqa: E402
from tfp_vae.model import memory_maps  # noqa: E402

SETTINGS = {"xla": "GaussianVAE, XLA (`jit_compile=True`)", "plain": "GaussianVAE, no XLA (`jit_compile=False`)",
            "keras": "a plain tf_keras network (Dense 16, Dense 10, MSE), no XLA: the floor"}


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def fit_models(models: int, setting: str) -> list[tuple[int, int, float]]:
    """(models fitted, maps, resident MB) after every tenth model of a `SETTINGS` key."""
    from tfp_vae import GaussianVAE
    from tfp_vae._keras import tf_keras
    x = np.random.default_rng(0).normal(size=(400, 10)).astype(np.float32)
    readings = []
    for index in range(models):
        if setting == "keras":
            model = tf_keras.Sequential([tf_keras.layers.Dense(16, activation="relu"), tf_keras.layers.Dense(10)])
            model.compile(optimizer="adam", loss="mse")
            model.fit(x, x, epochs=1, batch_size=100, verbose=0)
        else:
            model = GaussianVAE(10, code_size=2, hidden=(16,), seed=index)
            model.compile(jit_compile=setting == "xla")
            model.fit(x, epochs=1, batch_size=100, verbose=0)
        del model
        gc.collect()
        if (index + 1) % 10 == 0:
            readings.append((index + 1, memory_maps()[0], resident_mb()))
    return readings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "process_memory.md"))
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)  # a child process: its readings
    args = parser.parse_args(argv)
    if args.models < 20:
        parser.error("--models must be at least 20: the slope needs two readings")
    if args.one:
        print(json.dumps(fit_models(args.models, args.one)))
        return
    max_maps = memory_maps()[1]
    rows = []
    for setting, name in SETTINGS.items():
        child = subprocess.run([sys.executable, __file__, f"--models={args.models}", f"--one={setting}"],
                               capture_output=True, text=True, check=True)
        readings = json.loads(child.stdout.strip().splitlines()[-1])
        (first, first_maps, first_mb), (last, last_maps, last_mb) = readings[0], readings[-1]
        maps_per_model = (last_maps - first_maps) / (last - first)
        until_limit = (f"{(max_maps - last_maps) / maps_per_model + last:,.0f}" if maps_per_model > 1
                       else "never")
        rows.append(f"| {name} | {maps_per_model:.0f} | {(last_mb - first_mb) / (last - first):.1f} | "
                    f"{last_maps:,} | {last_mb:,.0f} | {until_limit} |")
    import tensorflow as tf
    write_report([
        "# What each model trained in one process leaves behind", "",
        f"`python benchmarks/process_memory.py --models {args.models}`: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, TensorFlow {tf.__version__}; `vm.max_map_count` {max_maps:,}. Per model: the "
        f"growth from the 10th model to the {args.models}th, each a fresh network fitted for one epoch and dropped.",
        "",
        f"| fitted | maps per model | resident MB per model | maps after {args.models} | resident MB after "
        f"{args.models} | models until the map limit |", "|---|---|---|---|---|---|", *rows], args.out)


if __name__ == "__main__":
    main()
