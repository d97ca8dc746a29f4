r"""Filling gaps from the nearest reference rows: a member for the fills' blend (`tfp_vae.blend`).

A network and a linear Gaussian fill a cell from what the whole table says about
its column; the nearest rows fill it from the few rows most like its own, and
err on other cells (tables whose rows come in near-copies, as digits' strokes
do). `benchmarks/fill_ideas.py` measured what they add to a blend.

For a row x and a reference row r (the training rows, with their own gaps),
the distance is that of scikit-learn's `KNNImputer` (nan-Euclidean), over the
cells both observe, in each column's standard deviation s over the reference rows:

    d(x, r)^2 = D / |O| * sum_{j in O} ((x_j - r_j) / s_j)^2,   O = the cells both observe

A missing cell j of x is the mean of r_j over its `neighbours` nearest reference
rows among those that observe j; its predictive standard deviation is their
values' spread, and a draw is one of their values, picked at random. A row that
shares no observed cell with any reference row observing j gets the column's
mean and standard deviation, as `KNNImputer` does.

Selection with gaps (`tfp_vae.select`) scores it on the validation cells beside
the candidates, as a blend member only (it has no density): its reference rows
are the training rows of each fold, at most `MAX_REFERENCE_ROWS` of them drawn at
random (`reference_rows`), and where the blend keeps it, every row's, saved in
the run (`save`, `load`) and inside the SavedModel as constants.
"""

import os

import numpy as np
import tensorflow as tf

from tfp_vae.data import check_block, require_2d
from tfp_vae.model import DRAW_NUMBERS, IMPUTE_ROWS, IMPUTE_SAMPLES, require_count

NEIGHBOURS = 5  # scikit-learn's KNNImputer's default
NAME = f"neighbours-k{NEIGHBOURS}"  # its row in candidates.csv
MAX_REFERENCE_ROWS = 5000  # each row filled takes as many distances, and the SavedModel holds them all
REFERENCE_FILE = "neighbours.npz"


def reference_rows(blocks, limit: int = MAX_REFERENCE_ROWS, seed: int = 0) -> np.ndarray:
    """At most `limit` rows of `blocks` (arrays [rows, D]), drawn uniformly at random in one pass, in their order."""
    rng = np.random.default_rng(seed)
    kept, keys = [], []
    for block in blocks:
        kept.append(np.asarray(block, np.float32))
        keys.append(rng.random(len(block)))
        rows, order = np.concatenate(kept), np.concatenate(keys)
        if len(rows) > limit:
            smallest = np.sort(np.argpartition(order, limit)[:limit])
            rows, order = rows[smallest], order[smallest]
        kept, keys = [rows], [order]
    return kept[0] if kept else np.zeros([0, 0], np.float32)


class NeighbourFill:
    """Fills gaps with the mean of the nearest reference rows' values; see the module docstring.

    `rows` [N, D], the reference rows in raw units (NaN where missing);
    `neighbours`, how many of them fill each cell. It fills as a model does
    (`impute`, `imputation`), so a `FillBlend` takes it as a member.

    #### Example

    ```python
    fill = NeighbourFill(training_rows, neighbours=5)
    filled, stddev = fill.impute(x)  # x [B, D] with NaN gaps
    ```
    """

    def __init__(self, rows, neighbours: int = NEIGHBOURS):
        require_count(neighbours, "neighbours", least=1)
        self.rows = require_2d(np.asarray(rows, np.float32), "rows")
        self.neighbours = neighbours
        self.input_size = self.rows.shape[1]
        seen = ~np.isnan(self.rows)
        if np.any(np.isinf(self.rows)) or not seen.any(axis=0).all():
            raise ValueError("reference rows need finite values and at least one observed value in every column")
        self.centre = np.nanmean(self.rows, axis=0)
        self.stddev = np.nanstd(self.rows, axis=0)
        self.scale = np.where(self.stddev > 0, self.stddev, 1.0).astype(np.float32)
        self._standardized = np.where(seen, (self.rows - self.centre) / self.scale, 0.0).astype(np.float32)
        self._seen = seen.astype(np.float32)
        self._columns = np.nan_to_num(self.rows).T  # [D, N], the donors' values column by column
        self._donors = tf.function(self._donor_values, reduce_retracing=True)

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        np.savez(os.path.join(folder, REFERENCE_FILE), rows=self.rows, neighbours=self.neighbours)

    @classmethod
    def load(cls, folder: str) -> "NeighbourFill":
        with np.load(os.path.join(folder, REFERENCE_FILE)) as saved:
            return cls(saved["rows"], int(saved["neighbours"]))

    @property
    def constant_bytes(self) -> int:
        """What its reference rows take inside an exported graph (raw, standardised and the mask)."""
        return 3 * self.rows.nbytes

    def check_input(self, x, source: str = "x") -> None:
        check_block(require_2d(np.asarray(x), source), 0, self.input_size, source, allow_missing=True)

    def impute(self, x, draws: int | None = None, num_samples: int = IMPUTE_SAMPLES, seed: int = 0,
               batch_size: int = IMPUTE_ROWS):
        """As `VariationalAutoencoder.impute`: `(filled, stddev)`, and with `draws`, rows whose gaps hold one
        neighbour's value each, picked at random (`num_samples` is unused: the fills are exact). Rows are filled
        `batch_size` at a time, fewer where their distances would take more than `DRAW_NUMBERS` numbers."""
        self.check_input(x)
        x = np.asarray(x, np.float32)
        if not len(x):
            empty = np.zeros([0, self.input_size], np.float32)
            return (empty, empty) + ((np.zeros([draws, 0, self.input_size], np.float32),) if draws else ())
        filled, stddev, rows = [], [], []
        rng = np.random.default_rng(seed)
        rows_at_once = max(1, min(batch_size, DRAW_NUMBERS // len(self.rows)))
        for start in range(0, len(x), rows_at_once):
            batch = x[start:start + rows_at_once]
            values, valid = (part.numpy() for part in self._donors(tf.constant(batch)))
            fill, spread = (part.numpy() for part in self._moments(batch, values, valid))
            filled.append(fill)
            stddev.append(spread)
            if draws:
                rows.append(self._draws(batch, fill, values, valid, draws, rng))
        outputs = (np.concatenate(filled), np.concatenate(stddev))
        return outputs + (np.concatenate(rows, axis=1),) if draws else outputs

    def imputation(self, x, num_samples: int = IMPUTE_SAMPLES, seed: int = 0):
        """Tensors in and out: `(filled, stddev)` for rows `x` [B, D] with NaN gaps (the `impute` signature's)."""
        return self._moments(x, *self._donor_values(x))

    def _donor_values(self, x):
        """Each cell's `neighbours` nearest donors' values [B, D, K] (in raw units), and which of them exist (1.0)."""
        seen = tf.cast(tf.math.is_finite(x), tf.float32)
        standardized = tf.where(seen > 0, (x - self.centre) / self.scale, 0.0)
        reference, reference_seen = tf.constant(self._standardized), tf.constant(self._seen)
        common = tf.matmul(seen, reference_seen, transpose_b=True)
        squared = (tf.matmul(standardized ** 2, reference_seen, transpose_b=True)
                   + tf.matmul(seen, reference ** 2, transpose_b=True)
                   - 2.0 * tf.matmul(standardized, reference, transpose_b=True))
        distance = tf.where(common > 0, tf.maximum(squared, 0.0) * self.input_size / tf.maximum(common, 1.0),
                            np.inf)
        count = min(self.neighbours, len(self.rows))
        columns = tf.constant(self._columns)

        def donors(column):
            # One column at a time: a batch's distances to every reference row, [B, N], never [B, D, N].
            negative, index = tf.math.top_k(-tf.where(reference_seen[:, column] > 0, distance, np.inf), k=count)
            # A float mask: oneDNN transposes no bools on some CPUs, and says so on stderr at every run.
            return tf.gather(columns[column], index), tf.cast(tf.math.is_finite(negative), tf.float32)

        values, valid = tf.map_fn(donors, tf.range(self.input_size), fn_output_signature=(tf.float32, tf.float32))
        return tf.transpose(values, [1, 0, 2]), tf.transpose(valid, [1, 0, 2])

    def _moments(self, x, values, valid):
        """`(filled, stddev)`: the donors' mean and spread in the gaps (the column's where none), x elsewhere."""
        count = tf.reduce_sum(valid, axis=-1)
        mean = tf.reduce_sum(values * valid, axis=-1) / tf.maximum(count, 1.0)
        spread = tf.sqrt(tf.reduce_sum(valid * (values - mean[..., tf.newaxis]) ** 2, axis=-1) / tf.maximum(count, 1.0))
        any_donor = count > 0
        mean = tf.where(any_donor, mean, self.centre)
        spread = tf.where(any_donor, spread, self.stddev)
        gaps = tf.math.is_nan(x)
        return tf.where(gaps, mean, x), tf.where(gaps, spread, 0.0)

    def _draws(self, x, filled, values, valid, draws: int, rng):
        """[draws, B, D] rows: each gap one of its donors' values, picked at random (the column's mean where none)."""
        count = valid.sum(axis=-1)
        pick = np.floor(rng.random((draws,) + count.shape) * np.maximum(count, 1)).astype(np.int64)
        picked = np.take_along_axis(values[np.newaxis], pick[..., np.newaxis], axis=-1)[..., 0]
        return np.where(np.isnan(x), np.where(count > 0, picked, filled), x).astype(np.float32)
