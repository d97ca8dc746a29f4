"""The input pipeline: data in memory or in CSV files, as tf.data datasets for training.

Rows are split into training and validation by a hash of their position, so the
split is the same on every pass, in every process and on every worker, and needs
no shuffle of the whole data set in memory. A `CsvSource` reads its files twice:
one validating pass in Python (clear errors, float64 statistics of the training
rows), then tf.data streams them (`TextLineDataset` and `decode_csv`), so memory
holds a shuffle buffer, never the file. `source_for` streams only files larger than
`IN_MEMORY_BYTES`; smaller ones are read once into an `ArraySource`.

A source can be `dequantized`: its integer-valued columns carry uniform noise,
U(-0.5, 0.5), a function of each row's position, so every pass (statistics,
training, validation) reads the same values. On the integers themselves a density
can pile ever narrower peaks onto the values seen, and its likelihood grows without
bound; on dequantised rows it is at most the log-probability of the integers.
"""

import copy
import math
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfp_vae.data import (RunningMoments, check_block, clean_blocks, csv_header, expand_paths, read_table,
                          require_2d, select_columns)
from tfp_vae.errors import DataError

HASH_MULTIPLIER = 2654435761
LINES_PER_BLOCK = 4096
SHUFFLE_BUFFER = 10_000
SUBSETS = ("train", "validation", "all")
IN_MEMORY_BYTES = 16 * 2**20  # CSV files up to this size are read once, into memory
# An unquoted missing token (`data.MISSING_TOKENS`) as a whole cell, with the separators around it.
MISSING_CELL = r"(^|,)[ \t]*(?i:na|n/a|nan|null)[ \t]*(,|$)"


def in_validation(row_index, fraction: float, seed: int, fold: int = 0):
    """Whether each row (by position) is held out: a multiplicative hash in the `fold`-th window of width `fraction`.

    Windows `fold` = 0, 1, ... are disjoint, so with `fraction` = 1 / k the k
    folds hold out every row once (cross-validation). The same arithmetic serves
    numpy arrays and int64 tensors.
    """
    width = int(fraction * 2**32)
    hashed = (row_index * HASH_MULTIPLIER + seed * 40503 - fold * width) % 2**32
    return hashed < width


@dataclass
class Scan:
    """What one pass over the data found: statistics of the training rows, counts, and the first training rows kept."""

    train_moments: RunningMoments
    train_rows: int
    validation_rows: int
    dropped_rows: int
    train_sample: np.ndarray | None = None


def dequantization_noise(row_index, columns, width: int, seed: int) -> np.ndarray:
    """U(-0.5, 0.5) in `columns`, 0 in the others, float32 [rows, width]: splitmix64's hash of each row's position,
    column and `seed`, so a row gets the same noise on every pass and in any block."""
    cells = np.asarray(row_index, np.uint64)[:, None] * np.uint64(width) + np.asarray(columns, np.uint64)
    with np.errstate(over="ignore"):
        hashed = cells + np.uint64(seed + 1) * np.uint64(0x9E3779B97F4A7C15)
        hashed = (hashed ^ (hashed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        hashed = (hashed ^ (hashed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    hashed ^= hashed >> np.uint64(31)
    noise = np.zeros((len(cells), width), np.float32)
    noise[:, columns] = (hashed >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24) - np.float32(0.5)
    return noise


class Source:
    """What every source shares: the columns it dequantises (`dequantized`), none unless set."""

    dequantized_columns = np.zeros(0, int)
    dequantization_seed = 0

    def noise(self, row_index) -> np.ndarray:
        return dequantization_noise(row_index, self.dequantized_columns, self.width, self.dequantization_seed)

    def with_noise(self, values, row_index):
        """`values` plus their rows' noise; `values` themselves where no column is dequantised."""
        return values + self.noise(row_index) if len(self.dequantized_columns) else values


class ArraySource(Source):
    """Rows already in memory: a float32 array [rows, features].

    `dropped_rows` counts rows a reader left out (blank or non-finite cells), for the
    training's report. With `allow_missing`, NaN cells are missing values.
    """

    def __init__(self, values, columns=None, dropped_rows: int = 0, allow_missing: bool = False, name: str = "x"):
        self.values = require_2d(np.asarray(values, np.float32), name)
        check_block(self.values, 0, None, name, allow_missing)
        if allow_missing:  # a row with no observed cell says nothing
            empty = np.isnan(self.values).all(axis=1)
            if empty.all():
                raise DataError(f"{name}: none of its {len(empty)} rows has an observed cell")
            self.values, dropped_rows = self.values[~empty], dropped_rows + int(empty.sum())
        self.columns = list(columns) if columns is not None else [str(i) for i in range(self.values.shape[1])]
        self.dropped_rows = dropped_rows
        self.name = name

    @property
    def width(self) -> int:
        return self.values.shape[1]

    def blocks(self):
        for start in range(0, len(self.values), LINES_PER_BLOCK):
            row_index = np.arange(start, min(start + LINES_PER_BLOCK, len(self.values)))
            values = self.with_noise(self.values[start:start + LINES_PER_BLOCK], row_index).astype(np.float64)
            yield values, row_index, self.dropped_rows if start == 0 else 0

    def rows(self, subset: str, validation_fraction: float, seed: int, fold: int = 0) -> tf.data.Dataset:
        """The subset's rows, one dataset element each, sliced from memory."""
        row_index = np.flatnonzero(_subset_mask(np.arange(len(self.values)), subset, validation_fraction, seed, fold))
        return tf.data.Dataset.from_tensor_slices(self.with_noise(self.values[row_index], row_index))


class CsvSource(Source):
    """CSV files (a path or a glob), streamed: validated once in Python, then read by tf.data."""

    def __init__(self, pattern, columns=None, drop_nonfinite: bool = False):
        self.pattern = self.name = pattern
        self.paths = expand_paths(pattern)
        for path in self.paths:
            if not path.endswith(".csv"):
                raise DataError(f"{path}: streaming reads .csv files only")
        headers = [csv_header(path) for path in self.paths]
        self.names = headers[0][0]
        self.preambles = [preamble for _, preamble in headers]  # lines before each file's data
        self.indices = select_columns(self.names, columns, self.paths[0])
        self.columns = [self.names[i] for i in self.indices]
        self.selection = columns
        self.drop_nonfinite = drop_nonfinite

    @property
    def width(self) -> int:
        return len(self.indices)

    def blocks(self):
        for block, dropped in clean_blocks(self.pattern, self.selection, self.drop_nonfinite):
            yield self.with_noise(block.values, block.row_index), block.row_index, dropped

    def rows(self, subset: str, validation_fraction: float, seed: int, fold: int = 0) -> tf.data.Dataset:
        """The subset's rows, one dataset element each, streamed from the files; rows with blank or
        non-finite cells (kept only under `drop_nonfinite`, after the validating pass) are dropped."""
        lines = tf.data.Dataset.from_tensor_slices((self.paths, tf.constant(self.preambles, tf.int64))).flat_map(
            lambda path, preamble: tf.data.TextLineDataset(path).map(clean_line)
            .filter(lambda line: tf.strings.length(line) > 0).skip(preamble))
        ordered = sorted(set(self.indices))
        positions = [ordered.index(i) for i in self.indices]
        defaults = [tf.constant(math.nan, tf.float32)] * len(ordered)

        def decode(block_number, block):
            columns = tf.io.decode_csv(block, record_defaults=defaults, select_cols=ordered)
            values = tf.gather(tf.stack(columns, axis=1), positions, axis=1)
            row_index = block_number * LINES_PER_BLOCK + tf.range(tf.shape(values)[0], dtype=tf.int64)
            if len(self.dequantized_columns):
                noise = tf.numpy_function(self.noise, [row_index], tf.float32, stateful=False)
                values += tf.ensure_shape(noise, values.shape)
            return values, row_index

        def keep(values, row_index):
            mask = tf.reduce_all(tf.math.is_finite(values), axis=1)
            return tf.boolean_mask(values, mask & _subset_mask(row_index, subset, validation_fraction, seed, fold))

        blocks = lines.batch(LINES_PER_BLOCK).enumerate().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        return blocks.map(keep, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def clean_line(line):
    """A CSV line as the validating pass read it: no byte-order mark before it, no carriage return after, and
    missing tokens (NA, N/A, null: `data.MISSING_TOKENS`) as blank cells, which tf.data reads as NaN."""
    line = tf.strings.regex_replace(tf.strings.regex_replace(line, "\r$", ""), "^\ufeff", "")
    for _ in range(2):  # a match takes the comma after it, so a run of missing cells needs a second pass
        line = tf.strings.regex_replace(line, MISSING_CELL, r"\1\2")
    return line


def source_for(pattern, columns=None, drop_nonfinite: bool = False, in_memory_bytes: int = IN_MEMORY_BYTES,
               allow_missing: bool = False):
    """A `CsvSource` streaming CSV files larger than `in_memory_bytes`; an in-memory `ArraySource` otherwise.

    Small CSV files are read once: decoding them with tf.data at every epoch costs
    more than the training on a few hundred rows. Files with missing cells
    (`allow_missing`) are read into memory whatever their size.
    """
    paths = expand_paths(pattern)
    if (not allow_missing and all(path.endswith(".csv") for path in paths)
            and sum(map(os.path.getsize, paths)) > in_memory_bytes):
        return CsvSource(pattern, columns, drop_nonfinite)
    table = read_table(pattern, columns, drop_nonfinite, allow_missing)
    return ArraySource(table.values, table.columns, table.dropped_rows, allow_missing, name=str(pattern))


def integer_columns(source) -> np.ndarray:
    """Indices of `source`'s integer-valued columns (`RunningMoments.integer_columns`), from one pass over every
    row (no row is held out at a validation fraction of 0)."""
    return scan(source, 0.0, seed=0).train_moments.integer_columns()


def dequantized(source, columns, seed: int):
    """A copy of `source` whose `columns` carry U(-0.5, 0.5) noise on every pass (`dequantization_noise`)."""
    noisy = copy.copy(source)
    noisy.dequantized_columns, noisy.dequantization_seed = np.asarray(columns, int), seed
    return noisy


def dropped_rows_message(count: int, allow_missing: bool) -> str:
    """What a warning says of the rows a source left out: those with no observed cell where cells may be missing,
    else those with a blank or non-finite cell (`drop_nonfinite`)."""
    return f"dropped {count} row(s) with " + ("no observed cell" if allow_missing else "blank, NaN or infinite cells")


def as_source(data, allow_missing: bool = False):
    """`data` if it is a source already, else an `ArraySource` of the array it is."""
    return data if isinstance(data, (ArraySource, CsvSource)) else ArraySource(data, allow_missing=allow_missing)


def scan(source, validation_fraction: float, seed: int, covariance: bool = False, keep_rows: int = 0,
         fold: int = 0) -> Scan:
    """One validating pass: float64 moments of the training rows, how many rows each side, and the first `keep_rows`."""
    moments, train_rows, validation_rows, dropped = RunningMoments(covariance), 0, 0, 0
    kept = []
    for values, row_index, dropped_here in source.blocks():
        held_out = in_validation(row_index, validation_fraction, seed, fold)
        moments.update(values[~held_out])
        if train_rows < keep_rows:
            kept.append(values[~held_out][:keep_rows - train_rows])
        train_rows += int((~held_out).sum())
        validation_rows += int(held_out.sum())
        dropped += dropped_here
    return Scan(moments, train_rows, validation_rows, dropped, np.concatenate(kept) if kept else None)


def dataset(source, subset: str, batch_size: int, validation_fraction: float = 0.0, seed: int = 0,
            shuffle: bool = False, row_count: int | None = None, passes: int = 1, fold: int = 0) -> tf.data.Dataset:
    """Batches of float32 rows of `subset` ("train", "validation" or "all"), streamed from `source`.

    `row_count`, the subset's size when a scan has counted it, lets Keras know the
    number of batches, which running several steps per call needs. `passes`
    repeats the rows (each pass shuffled anew), so that an epoch of a small table
    is long enough to outweigh its fixed cost.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    rows = source.rows(subset, validation_fraction, seed, fold)
    if shuffle:
        rows = rows.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if passes > 1:
        rows = rows.repeat(passes)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = rows.batch(batch_size)
    if row_count is not None:
        batches = batches.apply(tf.data.experimental.assert_cardinality(math.ceil(row_count * passes / batch_size)))
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def _subset_mask(row_index, subset: str, validation_fraction: float, seed: int, fold: int):
    if subset == "all":
        return row_index >= 0
    held_out = in_validation(row_index, validation_fraction, seed, fold)
    return held_out if subset == "validation" else ~held_out
