"""Reading, validating and streaming real-valued data.

Arrays and `tf.data` datasets reach the model through `batches`; statistics come
from one streaming pass (`RunningMoments`, Chan et al.'s parallel update in
float64), so nothing here needs the whole data set in memory.
"""

import csv
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf


class TfpVaeError(ValueError):
    """A problem with what the user gave (data, a run folder, an export base), said in one line."""


class DataError(TfpVaeError):
    """Input data that cannot be used, with the file, row, column or shape at fault in its message."""


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


@dataclass
class Table:
    """Rows of float32 values read from files, with their column names."""

    values: np.ndarray
    columns: list[str]
    dropped_rows: int = 0


def expand_paths(pattern) -> list[str]:
    """A file, or the sorted files a glob such as `data/part-*.csv` matches."""
    pattern = os.fspath(pattern)
    if glob.has_magic(pattern):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise DataError(f"{pattern}: no file matches this pattern")
        return paths
    if not os.path.exists(pattern):
        raise DataError(f"{pattern}: no such file")
    if os.path.isdir(pattern):
        raise DataError(f"{pattern}: is a folder, not a .csv or .npy file")
    return [pattern]


def read_table(pattern, columns=None, drop_nonfinite: bool = False) -> Table:
    """Reads `.csv` (with or without a header row) or `.npy` files into one validated table.

    `columns` selects columns by name or index. Non-finite or blank cells are an
    error unless `drop_nonfinite`, which drops their rows and counts them.
    """
    tables = [_read_file(path, columns, drop_nonfinite) for path in expand_paths(pattern)]
    for path, table in zip(expand_paths(pattern), tables[1:]):
        if table.columns != tables[0].columns:
            raise DataError(f"{path}: columns {table.columns} differ from the first file's {tables[0].columns}")
    values = np.concatenate([table.values for table in tables]) if len(tables) > 1 else tables[0].values
    return Table(values, tables[0].columns, sum(table.dropped_rows for table in tables))


def _read_file(path: str, columns, drop_nonfinite: bool) -> Table:
    if path.endswith(".npy"):
        values, names, kept = _read_npy(path)
    elif path.endswith(".csv"):
        values, names, kept = _read_csv(path)
    else:
        raise DataError(f"{path}: unsupported file type; use .csv or .npy")
    selected = select_columns(names, columns, path)
    values, names = values[:, selected], [names[i] for i in selected]
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        if not drop_nonfinite:
            row, column = np.argwhere(~np.isfinite(values))[0]
            raise DataError(
                f"{path}: {_describe(values[row, column])} at {kept[row]}, column {names[column]!r}; "
                "fix it or pass --drop-nonfinite to skip such rows")
        values = values[finite]
    too_large = np.abs(values) > np.finfo(np.float32).max
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise DataError(f"{path}: value {values[row, column]:g} at {kept[np.flatnonzero(finite)[row]]}, "
                        f"column {names[column]!r} is too large for float32")
    if len(values) == 0:
        raise DataError(f"{path}: no rows of data")
    return Table(values.astype(np.float32), names, int((~finite).sum()))


def _describe(value: float) -> str:
    return "blank or NaN cell" if np.isnan(value) else f"infinite value {value}"


def _read_npy(path: str):
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read as .npy ({error})") from error
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-d array [rows, features], got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{path}: expected numbers, got dtype {array.dtype}")
    return array.astype(np.float64), [str(i) for i in range(array.shape[1])], [f"row {i}" for i in range(len(array))]


def _read_csv(path: str):
    try:
        with open(path, newline="") as file:
            lines = [(number, row) for number, row in enumerate(csv.reader(file), start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from error
    if not lines:
        raise DataError(f"{path}: empty file")
    first = lines[0][1]
    has_header = any(_cell_is_text(cell) for cell in first)
    names = [cell.strip() for cell in first] if has_header else [str(i) for i in range(len(first))]
    body = lines[1:] if has_header else lines
    if not body:
        raise DataError(f"{path}: header only, no rows of data")
    values = np.empty((len(body), len(names)))
    for index, (number, row) in enumerate(body):
        if len(row) != len(names):
            raise DataError(f"{path}: line {number} has {len(row)} cells, expected {len(names)}")
        for column, cell in enumerate(row):
            try:
                values[index, column] = float(cell) if cell.strip() else np.nan
            except ValueError:
                raise DataError(
                    f"{path}: line {number}, column {names[column]!r}: non-numeric value {cell.strip()!r}") from None
    return values, names, [f"line {number}" for number, _ in body]


def _cell_is_text(cell: str) -> bool:
    try:
        float(cell)
        return False
    except ValueError:
        return bool(cell.strip())


def select_columns(names: list[str], columns, source: str) -> list[int]:
    """Indices of `columns` (names, or integer indices), all columns when None."""
    if columns is None:
        return list(range(len(names)))
    indices = []
    for token in columns:
        token = str(token).strip()
        if token in names:
            indices.append(names.index(token))
        elif token.lstrip("-").isdigit() and -len(names) <= int(token) < len(names):
            indices.append(int(token) % len(names))
        else:
            raise DataError(f"{source}: no column {token!r}; columns are {', '.join(names)}")
    return indices
