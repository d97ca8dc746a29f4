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
