"""Reading, validating and streaming real-valued data, without loading TensorFlow.

Arrays and `tf.data` datasets reach the model through `batches`; statistics come
from one streaming pass (`RunningMoments`, Chan et al.'s parallel update in
float64), so nothing here needs the whole data set in memory.
"""

import csv
import glob
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tfp_vae.errors import DataError

FLOAT32_MAX = np.finfo(np.float32).max


def features_of(element):
    """The feature tensor of a dataset element: `x`, or the first item of `(x, ...)`."""
    return element[0] if isinstance(element, (tuple, list)) else element


def batches(data, source: str = "input", batch_size: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(first_row, float64 block)` over an array or a `tf.data.Dataset`."""
    if hasattr(data, "as_numpy_iterator"):  # a dataset; this module runs without TensorFlow loaded
        first_row = 0
        for element in data.as_numpy_iterator():
            block = np.asarray(features_of(element), np.float64)
            if block.ndim == 1:
                block = block[None, :]
            yield first_row, block
            first_row += len(block)
        return
    array = require_2d(np.asarray(data), source)
    for start in range(0, len(array), batch_size):
        yield start, np.asarray(array[start:start + batch_size], np.float64)


def first_rows(data, limit: int, source: str = "input") -> np.ndarray:
    """Up to `limit` float64 rows from the start of an array or a `tf.data.Dataset`."""
    rows, count = [], 0
    for _, block in batches(data, source):
        rows.append(block[:limit - count])
        count += len(rows[-1])
        if count >= limit:
            break
    return np.concatenate(rows)


def require_2d(array: np.ndarray, source: str) -> np.ndarray:
    """`array`, if it is 2-d [rows, features]; else a `DataError` naming its shape."""
    if array.ndim != 2:
        raise DataError(f"{source}: expected a 2-d array [rows, features], got shape {array.shape}")
    return array


def first_cell(mask: np.ndarray) -> tuple[int, int] | None:
    """Row and column of the first true cell of a 2-d mask, or None."""
    cells = np.argwhere(mask)
    return (int(cells[0][0]), int(cells[0][1])) if len(cells) else None


def refuse_too_large(values: np.ndarray, source: str, place_of_row, name_of_column) -> None:
    """A `DataError` at the first value that float32 cannot hold, placed by the two functions."""
    cell = first_cell(np.abs(values) > FLOAT32_MAX)
    if cell:
        row, column = cell
        raise DataError(f"{source}: value {values[row, column]:g} at {place_of_row(row)}, "
                        f"column {name_of_column(column)} is too large for float32")


def check_block(block: np.ndarray, first_row: int, input_size: int | None, source: str,
                allow_missing: bool = False) -> None:
    """Raises a `DataError` naming the shape, or the first row and column, at fault.

    NaN is a missing cell: an error unless `allow_missing`. Infinities always are.
    """
    if input_size is not None and block.shape[-1] != input_size:
        raise DataError(
            f"{source}: expected {input_size} features per row, got shape {block.shape}")
    cell = first_cell(np.isinf(block) if allow_missing else ~np.isfinite(block))
    if cell:
        row, column = cell
        hint = "" if np.isinf(block[row, column]) else MISSING_HINT
        raise DataError(
            f"{source}: non-finite value {block[row, column]} at row {first_row + row}, column {column}{hint}")
    refuse_too_large(np.nan_to_num(block), source, lambda row: f"row {first_row + row}", str)


class RunningMoments:
    """Per-feature count, mean, variance, least and greatest value, merged block by block in float64.

    A NaN cell is missing: each feature's mean, variance, `minimum`, `maximum` and `integral`
    (whether all are integers) are over its observed cells (`observed` counts them); `count`
    counts rows. With `covariance=True` it also keeps the D x D covariance (what whitening
    needs), at D^2 memory and work per row, from complete rows only.
    """

    def __init__(self, covariance: bool = False):
        self.tracks_covariance = covariance
        self.count = 0
        self.observed = None
        self.mean = None
        self.minimum = self.maximum = self.integral = None
        self._sum_squares = None
        self._sum_products = None

    def update(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        present = ~np.isnan(block)
        if self.tracks_covariance and not present.all():
            row, column = first_cell(~present)
            raise DataError(f"a missing cell (row {row} of a block, column {column}): whitening needs complete "
                            "rows; use normalization='standardize'")
        n = present.sum(axis=0)
        block_mean = np.where(n > 0, np.where(present, block, 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)
        centred = np.where(present, block - block_mean, 0.0)
        block_sum_squares = (centred**2).sum(axis=0)
        block_sum_products = centred.T @ centred if self.tracks_covariance else None
        block_minimum = np.fmin.reduce(block, axis=0)  # NaN only where a column has no observed cell
        block_maximum = np.fmax.reduce(block, axis=0)
        block_integral = np.all(~present | (block == np.round(block)), axis=0)
        if self.count == 0:
            self.count, self.observed, self.mean = len(block), n, block_mean
            self.minimum, self.maximum, self.integral = block_minimum, block_maximum, block_integral
            self._sum_squares, self._sum_products = block_sum_squares, block_sum_products
            return
        total = self.observed + n
        delta = block_mean - self.mean
        weight = self.observed * n / np.maximum(total, 1)
        self.mean = self.mean + delta * (n / np.maximum(total, 1))
        self.minimum = np.fmin(self.minimum, block_minimum)
        self.maximum = np.fmax(self.maximum, block_maximum)
        self.integral = self.integral & block_integral
        self._sum_squares = self._sum_squares + block_sum_squares + delta**2 * weight
        if self.tracks_covariance:
            self._sum_products = (self._sum_products + block_sum_products
                                  + np.outer(delta, delta) * self.count * len(block) / (self.count + len(block)))
        self.count += len(block)
        self.observed = total

    def integer_columns(self) -> np.ndarray:
        """Indices of the features whose observed values are all integers, within 2**24 of 0 and not all one value.

        Past 2**24 every float32 is a whole number: such a column is large, not
        counted. A constant keeps its own rule (`normalization.constant_columns`).
        """
        largest = np.fmax(np.abs(self.minimum), np.abs(self.maximum))
        return np.flatnonzero(self.integral & (self.minimum < self.maximum) & (largest <= 2.0**24))

    @property
    def variance(self) -> np.ndarray:
        return self._sum_squares / np.maximum(self.observed, 1)

    @property
    def stddev(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def covariance(self) -> np.ndarray | None:
        """The population covariance [D, D], or None unless asked for at construction."""
        return None if self._sum_products is None else self._sum_products / self.count


def moments(data, input_size: int | None = None, source: str = "input", covariance: bool = False,
            allow_missing: bool = False) -> RunningMoments:
    """One validating pass over `data`: its per-feature mean and standard deviation (and covariance)."""
    running = RunningMoments(covariance)
    for first_row, block in batches(data, source):
        check_block(block, first_row, input_size, source, allow_missing)
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


@dataclass
class Block:
    """Consecutive rows of one file: float64 values, and where each row came from (for messages)."""

    path: str
    names: list[str]
    values: np.ndarray
    places: list[str]
    row_index: np.ndarray | None = None
    header: list[str] | None = None  # every column's name, selected or not


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
    if not os.path.isfile(pattern):
        raise DataError(f"{pattern}: not a regular file (a pipe or a device); the data is read more than once, "
                        "so save it to a file first")
    return [pattern]


def file_blocks(path: str, rows_per_block: int = 8192, columns=None) -> Iterator[Block]:
    """Yields a `.csv` or `.npy` file's rows block by block, only the `columns` selected (all when None).

    Only selected columns are parsed: IDs and names beside the numbers are normal.
    What cannot be parsed is refused.
    """
    if path.endswith(".npy"):
        yield from _npy_blocks(path, rows_per_block, columns)
    elif path.endswith(".csv"):
        yield from _csv_blocks(path, rows_per_block, columns)
    else:
        raise DataError(f"{path}: unsupported file type; use .csv or .npy")


def _npy_blocks(path: str, rows_per_block: int, columns) -> Iterator[Block]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read as .npy ({error})") from error
    require_2d(array, path)
    if np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{path}: complex numbers (dtype {array.dtype}); save their real and imaginary parts as "
                        "columns of a real array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{path}: expected numbers, got dtype {array.dtype}")
    if len(array) == 0:
        raise DataError(f"{path}: no rows of data")
    if array.shape[1] == 0:
        raise DataError(f"{path}: no columns of data (shape {array.shape})")
    header = [str(i) for i in range(array.shape[1])]
    selected = select_columns(header, columns, path)
    for start in range(0, len(array), rows_per_block):
        rows = np.asarray(array[start:start + rows_per_block][:, selected], np.float64)
        yield Block(path, [header[i] for i in selected], rows, [f"row {i}" for i in range(start, start + len(rows))],
                    header=header)


# One definition of a number for both passes over a CSV file: what tf.data's decode_csv reads, in ASCII
# (Python's float() would also take 1_000 and full-width digits, which decode_csv refuses mid-training).
NUMBER = re.compile(r"\s*[+-]?(((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)|inf|infinity|nan)\s*", re.IGNORECASE | re.ASCII)
# Excel writes a byte-order mark before the first cell; "utf-8-sig" reads past it.
ENCODING = "utf-8-sig"


# Cells that mean "missing" in a CSV file, whatever their case: read as NaN.
MISSING_TOKENS = ("", "na", "n/a", "nan", "null")
MISSING_HINT = "; pass allow_missing=True to learn from the observed cells, or drop_nonfinite=True to skip such rows"


def parse_number(cell: str) -> float:
    """The number a CSV cell holds (NaN if blank or a missing token), as tf.data reads it; `ValueError` if none."""
    if cell.strip().lower() in MISSING_TOKENS:
        return np.nan
    if not NUMBER.fullmatch(cell):
        raise ValueError(cell)
    return float(cell)


def csv_header(path: str) -> tuple[list[str], int]:
    """The column names of a CSV file, and how many of its non-blank lines come before its data: the comment
    lines that lead it (`is_comment`) and its header, if the first other line has a cell that is not a number."""
    try:
        with open(path, newline="", encoding=ENCODING) as file:
            lines = (row for row in csv.reader(file) if row)
            comments, first = 0, next(lines, None)
            while first is not None and is_comment(first):
                comments, first = comments + 1, next(lines, None)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise unreadable(path, error) from error
    if first is None:
        raise DataError(f"{path}: empty file" + (" (comment lines only)" if comments else ""))
    if any(_cell_is_text(cell) for cell in first):
        return [cell.strip() for cell in first], comments + 1
    return [str(i) for i in range(len(first))], comments


def is_comment(row: list[str]) -> bool:
    """Whether a CSV row before the header is a comment: one cell that starts with '#' ("# Data source: ...")."""
    return len(row) == 1 and row[0].lstrip().startswith("#")


def _csv_blocks(path: str, rows_per_block: int, columns) -> Iterator[Block]:
    header, preamble = csv_header(path)
    selected = select_columns(header, columns, path)
    names = [header[i] for i in selected]
    values, places, seen = [], [], 0
    for number, row in itertools.islice(csv_lines(path), preamble, None):
        values.append(_parse_row(row, header, selected, path, number, first=not (seen or values)))
        places.append(f"line {number}")
        if len(values) == rows_per_block:
            yield Block(path, names, np.array(values), places, header=header)
            seen += len(values)
            values, places = [], []
    if values:
        yield Block(path, names, np.array(values), places, header=header)
    elif seen == 0:
        raise DataError(f"{path}: header only, no rows of data")


def csv_lines(path: str) -> Iterator[tuple[int, list[str]]]:
    """A CSV file's non-blank rows, header included, each with its line number: cells as written."""
    try:
        with open(path, newline="", encoding=ENCODING) as file:
            reader = csv.reader(file)
            for row in reader:
                if row:
                    yield reader.line_num, row
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise unreadable(path, error) from error


def csv_data_rows(pattern) -> Iterator[list[str]]:
    """The data rows of `pattern`'s CSV files, in the order `read_table` reads them: cells as written."""
    for path in expand_paths(pattern):
        yield from (row for _, row in itertools.islice(csv_lines(path), csv_header(path)[1], None))


def _parse_row(row: list[str], header: list[str], selected: list[int], path: str, number: int,
               first: bool = False) -> list[float]:
    """The selected cells of a data row as numbers; `first`: the file's first data row, where a column of text
    (names, dates, identifiers) shows itself."""
    if len(row) != len(header):
        raise DataError(f"{path}: line {number} has {len(row)} cells, expected {len(header)}")
    for column, cell in enumerate(row):
        if "\n" in cell or "\r" in cell:  # tf.data reads a line at a time, selected columns or not
            raise DataError(f"{path}: line {number}, column {header[column]!r}: a quoted cell spans lines; "
                            "keep each row on one line")
    parsed = []
    for column in selected:
        try:
            parsed.append(parse_number(row[column]))
        except ValueError:
            separator = next((mark for mark in ";\t|" if len(header) == 1 and mark in row[column]), None)
            numeric = [name for name, cell in zip(header, row) if not _cell_is_text(cell)]
            hint = (f"; the file seems separated by {separator!r}: save it with commas" if separator
                    else f"; read only the numeric columns with columns='{','.join(numeric)}'" if first and numeric
                    else "")
            raise DataError(f"{path}: line {number}, column {header[column]!r}: non-numeric value "
                            f"{row[column].strip()!r}{hint}") from None
    return parsed


def unreadable(path: str, error: Exception) -> DataError:
    """The error for a file that cannot be read as text, saying what it seems to be instead."""
    if not isinstance(error, UnicodeDecodeError):
        return DataError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})")
    with open(path, "rb") as file:
        start = file.read(2)
    if start == b"\x1f\x8b":
        return DataError(f"{path}: cannot read: it is compressed (gzip); decompress it first")
    if start in (b"\xff\xfe", b"\xfe\xff"):
        return DataError(f"{path}: cannot read: it is UTF-16 text; save it as UTF-8")
    return DataError(f"{path}: cannot read: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                     f"{error.start}); save it as UTF-8")


def _cell_is_text(cell: str) -> bool:
    try:
        parse_number(cell)
        return False
    except ValueError:
        return True


def select_columns(names: list[str], columns, source: str) -> list[int]:
    """Indices of `columns` (names, or integer indices, in a list or one comma-separated string), all columns when
    None."""
    if columns is None:
        return list(range(len(names)))
    if isinstance(columns, str):
        columns = [part for part in columns.split(",") if part.strip()]
    if not len(columns):
        raise DataError(f"{source}: columns must be a non-empty list of names or indices (leave it out for all)")
    indices = []
    for token in columns:
        token = str(token).strip()
        if names.count(token) > 1:
            places = [str(i) for i, name in enumerate(names) if name == token]
            raise DataError(f"{source}: column name {token!r} appears {len(places)} times (columns "
                            f"{', '.join(places)}); select it by index")
        if token in names:
            indices.append(names.index(token))
        elif token.lstrip("-").isdigit() and -len(names) <= int(token) < len(names):
            indices.append(int(token) % len(names))
        else:
            raise DataError(f"{source}: no column {token!r}; columns are {', '.join(names)}")
    return indices


MISSING_COLUMNS_NAMED = 5  # absent columns an error names before '...'


def require_columns_of_run(names: list[str], header: list[str], expected: list[str] | None, source: str) -> None:
    """Refuses named columns `names` (selected from the file's `header`) that differ, in name or order, from those a
    model was trained on.

    Columns known only by their place (a file without a header, a .npy) pass.
    """
    if expected is None or all(name.isdigit() for name in names) or all(name.isdigit() for name in expected):
        return
    absent = [name for name in expected if name not in header]
    if absent:  # no selection can make them up
        named = ", ".join(map(repr, absent[:MISSING_COLUMNS_NAMED]))
        more = ", ..." if absent[MISSING_COLUMNS_NAMED:] else ""
        raise DataError(f"{source}: has no column {named}{more} ({len(absent)} of the {len(expected)} the model was "
                        "trained on)")
    if list(names) != list(expected):
        raise DataError(f"{source}: columns {list(names)} differ from the {list(expected)} the model was trained on; "
                        f"pick them in that order with columns='{','.join(expected)}'")


def clean_blocks(pattern, columns=None, drop_nonfinite: bool = False, rows_per_block: int = 8192,
                 allow_missing: bool = False) -> Iterator[tuple[Block, int]]:
    """Every file's blocks, columns selected, validated: yields `(block, rows dropped from it)`.

    Non-finite or missing cells (blank, NA, N/A, NaN, null) are an error naming the
    file, line and column, unless `drop_nonfinite`, which drops their rows, or
    `allow_missing`, which keeps missing cells as NaN (infinities stay an error).
    Files must share columns.
    `block.row_index` numbers each kept row among all data rows read so far.
    """
    first_header, first_row = None, 0
    for path in expand_paths(pattern):
        for block in file_blocks(path, rows_per_block, columns):
            if first_header is None:
                first_header = block.header
            elif block.header != first_header:
                raise DataError(f"{path}: columns {block.header} differ from the first file's {first_header}")
            values, names = block.values, block.names
            if allow_missing:
                finite = np.ones(len(values), bool)
                cell = first_cell(np.isinf(values))
            else:
                finite = np.isfinite(values).all(axis=1)
                cell = None if drop_nonfinite else first_cell(~np.isfinite(values))
            if cell:
                row, column = cell
                hint = "" if np.isinf(values[row, column]) else MISSING_HINT
                raise DataError(f"{path}: {_describe(values[row, column])} at {block.places[row]}, column "
                                f"{names[column]!r}; fix it{hint or ''}")
            kept = np.flatnonzero(finite)
            values = values[kept]
            refuse_too_large(np.nan_to_num(values), path, lambda row: block.places[kept[row]],
                             lambda column: repr(names[column]))
            yield (Block(path, names, values, [block.places[i] for i in kept], first_row + kept),
                   int(len(finite) - len(kept)))
            first_row += len(finite)


def read_table(pattern, columns=None, drop_nonfinite: bool = False, allow_missing: bool = False) -> Table:
    """Reads `.csv` (header row optional) or `.npy` files, or a glob of them, into one validated table.

    With `allow_missing`, missing cells are NaN.
    """
    blocks, dropped = [], 0
    for block, dropped_here in clean_blocks(pattern, columns, drop_nonfinite, allow_missing=allow_missing):
        blocks.append(block)
        dropped += dropped_here
    values = np.concatenate([block.values for block in blocks]).astype(np.float32)
    if len(values) == 0:
        raise DataError(f"{pattern}: no rows of data left")
    return Table(values, blocks[0].names, dropped)


def _describe(value: float) -> str:
    return "missing cell: blank, NA or NaN," if np.isnan(value) else f"infinite value {value}"
