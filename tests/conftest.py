import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def mixed_scale_data(rng):
    """Rows whose features sit at scales 1e-3 to 1e6 and offsets up to 1e4, correlated through 2 factors."""
    factors = rng.normal(size=(600, 2))
    loadings = rng.normal(size=(2, 5))
    standard = factors @ loadings + 0.3 * rng.normal(size=(600, 5))
    scales = np.array([1e-3, 1.0, 1e6, 10.0, 1.0])
    offsets = np.array([0.0, 1e4, 0.0, -50.0, 1e4])
    return (standard * scales + offsets).astype(np.float32)


ISOLATED = "TFP_VAE_TEST_IN_OWN_PROCESS"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs an `own_process` test as `python -m pytest NODEID` in a child process, and reports its result.

    A suite process that has built hundreds of models holds XLA's compiled code for each of them (never
    freed); late in such a process, selection's many fits once crashed TensorFlow at the memory-map limit
    (a segmentation fault; `compile` now leaves XLA off past half of it: `tfp_vae.model.xla_has_room`).
    """
    if pyfuncitem.get_closest_marker("own_process") is None or os.environ.get(ISOLATED):
        return None
    import subprocess
    import sys
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                               cwd=pyfuncitem.config.rootpath, env={**os.environ, ISOLATED: "1"},
                               capture_output=True, text=True)
    if completed.returncode != 0:
        pytest.fail(f"in its own process (exit {completed.returncode}):\n{completed.stdout[-6000:]}"
                    f"{completed.stderr[-2000:]}", pytrace=False)
    return True
