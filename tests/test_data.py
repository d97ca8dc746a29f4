import numpy as np
import pytest
import tensorflow as tf

from tfp_vae.data import DataError, RunningMoments, moments


def test_running_moments_match_numpy_over_uneven_blocks(rng):
    x = rng.normal(size=(1001, 3)) * [1e-3, 1.0, 1e6] + [1e4, 0.0, -5.0]
    running = RunningMoments()
    for start, stop in [(0, 1), (1, 400), (400, 1001)]:
        running.update(x[start:stop])
    assert running.count == 1001
    np.testing.assert_allclose(running.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(running.stddev, x.std(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(running.minimum, x.min(axis=0))
    np.testing.assert_array_equal(running.maximum, x.max(axis=0))
    assert running.covariance is None


def test_running_covariance_matches_numpy_over_uneven_blocks(rng):
    x = rng.normal(size=(1001, 3)) @ [[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]] * [1e-3, 1.0, 1e6] + 1e4
    running = RunningMoments(covariance=True)
    for start, stop in [(0, 1), (1, 400), (400, 1001)]:
        running.update(x[start:stop])
    np.testing.assert_allclose(running.covariance, np.cov(x, rowvar=False, bias=True), rtol=1e-7)


def test_moments_of_a_dataset_equal_those_of_the_array(rng):
    x = rng.normal(size=(300, 2)).astype(np.float32)
    from_dataset = moments(tf.data.Dataset.from_tensor_slices(x).batch(64))
    np.testing.assert_allclose(from_dataset.mean, x.astype(np.float64).mean(axis=0), rtol=1e-9)


@pytest.mark.parametrize("value, message", [(np.nan, "row 7, column 1"), (np.inf, "row 7, column 1"),
                                            (1e39, "too large for float32")])
def test_moments_name_the_bad_cell(value, message):
    x = np.zeros((10, 2))
    x[7, 1] = value
    with pytest.raises(DataError, match=message):
        moments(x, source="x")


def test_moments_name_the_wrong_width():
    with pytest.raises(DataError, match=r"expected 3 features per row, got shape \(10, 2\)"):
        moments(np.zeros((10, 2)), input_size=3)
