"""tf.distribute: mirrored replicas match one device, two workers train together, bad clusters fail clearly.

Each case runs in fresh processes: logical devices and collective ops must be set
up before TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tfp_vae.cli import main

MIRRORED = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfp_vae import GaussianVAE
from tfp_vae._keras import tf_keras
x = (np.random.default_rng(0).normal(size=(256, 4)) * [1, 10, 100, 0.1]).astype(np.float32)
devices = sys.argv[2].split(",")
strategy = tf.distribute.MirroredStrategy(devices) if len(devices) > 1 else tf.distribute.OneDeviceStrategy(devices[0])
with strategy.scope():
    model = GaussianVAE(4, code_size=2, hidden=(8,), decoder_scale=sys.argv[3], seed=0)
    model.compile(tf_keras.optimizers.Adam(0.01))
model.adapt(x)
model.fit(x, batch_size=64, epochs=3, shuffle=False, verbose=0)
np.savez(sys.argv[1], *model.get_weights())
"""

WORKER = r"""
import sys
import numpy as np
from tfp_vae import Config, train
x = (np.random.default_rng(0).normal(size=(512, 4)) * [1, 10, 100, 0.1]).astype(np.float32)
model = train(Config(strategy="multiworker", select="none", hidden=(8,), epochs=2, batch_size=64, seed=0), x,
              sys.argv[2],
              verbose=0, worker_timeout=120)
np.savez(sys.argv[1], *model.get_weights())
"""


def run_python(code, *args, env=None):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(path):
    with np.load(path) as saved:
        return [saved[name] for name in sorted(saved.files, key=lambda n: int(n.split("_")[1]))]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


@pytest.mark.slow
@pytest.mark.parametrize("decoder_scale", ["learned", "optimal"])
def test_mirrored_replicas_match_one_device(tmp_path, decoder_scale):
    runs = {name: run_python(MIRRORED, tmp_path / f"{name}.npz", devices, decoder_scale)
            for name, devices in (("one", "/cpu:0"), ("mirrored", "/cpu:0,/cpu:1"))}
    for process in runs.values():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    one, mirrored = weights(tmp_path / "one.npz"), weights(tmp_path / "mirrored.npz")
    assert len(one) == len(mirrored) > 10
    for a, b in zip(one, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_two_workers_train_together_and_the_chief_alone_writes(tmp_path):
    ports = free_ports(2)
    run_dir = tmp_path / "run"
    workers = [run_python(WORKER, tmp_path / f"worker{i}.npz", run_dir, env={"TF_CONFIG": tf_config(ports, i)})
               for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
    for a, b in zip(weights(tmp_path / "worker0.npz"), weights(tmp_path / "worker1.npz")):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(run_dir)) == ["config.json", "history.csv", "history.json", "logs", "model.keras",
                                           "thresholds.json"]
    assert len(json.loads((run_dir / "history.json").read_text())["loss"]) == 2


@pytest.mark.parametrize("value, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', 'TF_CONFIG needs "task"'),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', 'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "a position in that list"),
])
def test_malformed_tf_config_is_a_clear_error(tmp_path, capsys, monkeypatch, value, message):
    np.savetxt(tmp_path / "d.csv", np.random.default_rng(0).normal(size=(20, 2)), delimiter=",")
    monkeypatch.setenv("TF_CONFIG", value)
    assert main(["train", str(tmp_path / "d.csv"), "--out", str(tmp_path / "run"), "--strategy", "multiworker",
                 "--select", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "run").exists()


def test_a_missing_worker_ends_with_a_clear_error_not_a_hang(tmp_path):
    np.savetxt(tmp_path / "d.csv", np.random.default_rng(0).normal(size=(64, 2)), delimiter=",")
    started = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "tfp_vae.cli", "train", str(tmp_path / "d.csv"), "--out", str(tmp_path / "run"),
         "--strategy", "multiworker", "--select", "none", "--worker-timeout", "5", "--quiet"],
        env={**os.environ, "TF_CONFIG": tf_config(free_ports(2), 0)}, capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0 and time.time() - started < 60
    assert "error: not every worker in TF_CONFIG" in completed.stderr
