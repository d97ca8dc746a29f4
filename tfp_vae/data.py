"""Reading, validating and streaming real-valued data.

Arrays and `tf.data` datasets reach the model through `batches`; statistics come
from one streaming pass (`RunningMoments`, Chan et al.'s parallel update in
float64), so nothing here needs the whole data set in memory.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow as tf


class DataError(ValueError):
    """Input data that cannot be used, with the place at fault in its message."""


def features_of(element):
    """The feature tensor of a dataset element: `x`, or the first item of `(x, ...)`."""
    return element[0] if isinstance(element, (tuple, list)) else element


def batches(data, source: str = "input", batch_size: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(first_row, float64 block)` over an array or a `tf.data.Dataset`."""
    if isinstance(data, tf.data.Dataset):
        first_row = 0
        for element in data.as_numpy_iterator():
            block = np.asarray(features_of(element), np.float64)
            if block.ndim == 1:
                block = block[None, :]
            yield first_row, block
            first_row += len(block)
        return
    array = np.asarray(data)
    if array.ndim != 2:
        raise DataError(f"{source}: expected a 2-d array [rows, features], got shape {array.shape}")
    for start in range(0, len(array), batch_size):
        yield start, np.asarray(array[start:start + batch_size], np.float64)


def check_block(block: np.ndarray, first_row: int, input_size: int | None, source: str) -> None:
    """Raises a `DataError` naming the shape, or the first row and column, at fault."""
    if input_size is not None and block.shape[-1] != input_size:
        raise DataError(
            f"{source}: expected {input_size} features per row, got shape {block.shape}")
    bad = ~np.isfinite(block)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise DataError(
            f"{source}: non-finite value {block[row, column]} at row {first_row + row}, column {column}")
    too_large = np.abs(block) > np.finfo(np.float32).max
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise DataError(
            f"{source}: value {block[row, column]:g} at row {first_row + row}, column {column} "
            "is too large for float32")


class RunningMoments:
    """Per-feature count, mean and variance, merged block by block in float64."""

    def __init__(self):
        self.count = 0
        self.mean = None
        self._sum_squares = None

    def update(self, block: np.ndarray) -> None:
        n = len(block)
        if n == 0:
            return
        block_mean = block.mean(axis=0)
        block_sum_squares = ((block - block_mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self._sum_squares = n, block_mean, block_sum_squares
            return
        total = self.count + n
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self._sum_squares = self._sum_squares + block_sum_squares + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self._sum_squares / self.count

    @property
    def stddev(self) -> np.ndarray:
        return np.sqrt(self.variance)


def moments(data, input_size: int | None = None, source: str = "input") -> RunningMoments:
    """One validating pass over `data`: its per-feature mean and standard deviation."""
    running = RunningMoments()
    for first_row, block in batches(data, source):
        check_block(block, first_row, input_size, source)
        running.update(block)
    if running.count == 0:
        raise DataError(f"{source}: no rows")
    return running
