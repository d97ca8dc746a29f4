"""Training on several devices or machines: `tf.distribute` strategies, TF_CONFIG, and a watchdog for workers."""

import json
import os
import subprocess
import sys

import tensorflow as tf

from tfp_vae._keras import tf_keras
from tfp_vae.config import STRATEGIES
from tfp_vae.errors import TfpVaeError


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (every local GPU, else the CPU) or `multiworker` (from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TfpVaeError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def read_tf_config() -> str:
    """Checks TF_CONFIG's shape (cluster, task type and index) and returns its addresses, for messages."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise TfpVaeError("strategy='multiworker' needs TF_CONFIG set on every worker (see the README)")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise TfpVaeError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster, task = (tf_config.get("cluster"), tf_config.get("task")) if isinstance(tf_config, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(addresses, list) and addresses and all(isinstance(a, str) and ":" in a for a in addresses)
            for addresses in cluster.values()):
        raise TfpVaeError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]}')
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise TfpVaeError(f'TF_CONFIG needs "task": {{"type": one of {sorted(cluster)}, "index": a position in '
                          f'that list}}, got {task!r}')
    return ", ".join(address for addresses in cluster.values() for address in addresses)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: the chief, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


WATCHDOG = """
import os, signal, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.time() + seconds
while time.time() < deadline:
    time.sleep(0.2)
    try:
        os.kill(parent, 0)
    except OSError:
        sys.exit(0)
print("error: " + message, file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)
"""


class JoinWatchdog(tf_keras.callbacks.Callback):
    """Kills this process with a clear error unless the first training step ends within `seconds`.

    Workers meet inside TensorFlow's C++ runtime (at the strategy's start and at
    the first collective) and wait there, holding Python's lock, for every task in
    TF_CONFIG; nothing in this process can interrupt that, so a separate watchdog
    process ends it instead of letting a missing worker hang it for ever.
    """

    def __init__(self, seconds: float, addresses: str):
        super().__init__()
        message = (f"not every worker in TF_CONFIG ({addresses}) joined within {seconds:g} s; check each "
                   "address and that every worker was started (--worker-timeout sets the wait)")
        self.process = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds), message])

    def on_train_batch_end(self, batch, logs=None):
        self.stop()

    def on_train_end(self, logs=None):
        self.stop()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
