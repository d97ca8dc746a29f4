r"""Filling gaps with a blend of the candidates' fills (`select.fill_weights` chooses the weights).

`FillBlend` fills with the blend: the mean of its members' fills under the
weights, sum_i w_i fill_i, and the standard deviation of the mixture of their
predictive distributions, sqrt(sum_i w_i (s_i^2 + (fill_i - fill)^2)); its draws
take each row's draw from one member, picked by the weights. A run whose
selection kept a blend records the weights in `candidates.csv` (`fill_weight`),
and `runs.load_imputer` gives it back.
"""

import numpy as np
import tensorflow as tf

from tfp_vae.model import IMPUTE_ROWS, IMPUTE_SAMPLES, mixture_moments


class FillBlend:
    """Fills gaps with the weighted blend of several models trained with `allow_missing`; see the module docstring.

    `members`, the models (and the nearest rows, `tfp_vae.neighbours.NeighbourFill`,
    where selection kept them); `weights`, theirs (non-negative, summing to one). It
    fills as a model does (`impute`, `imputation`), so the command line and the
    SavedModel's `impute` signature take either.

    #### Example

    ```python
    imputer = tfp_vae.load_imputer("runs/gappy")   # the run's blend, or its model where it has none
    filled, stddev = imputer.impute(x)
    ```
    """

    def __init__(self, members: list, weights):
        weights = np.asarray(weights, np.float64)
        if len(members) != len(weights) or not len(members) or np.any(weights < 0) \
                or not np.isclose(weights.sum(), 1.0):
            raise ValueError(f"a blend needs one non-negative weight per member, summing to one; got {weights}")
        self.members = list(members)
        self.weights = weights
        self.input_size = members[0].input_size

    def check_input(self, x, source: str = "x") -> None:
        self.members[0].check_input(x, source)

    def impute(self, x, draws: int | None = None, num_samples: int = IMPUTE_SAMPLES, seed: int = 0,
               batch_size: int = IMPUTE_ROWS):
        """As `VariationalAutoencoder.impute`: `(filled, stddev)`, and with `draws`, rows drawn from the mixture."""
        picked = np.random.default_rng(seed).choice(len(self.members), size=(draws, len(x)), p=self.weights) \
            if draws else None
        fills, stddevs, rows = [], [], None
        for index, member in enumerate(self.members):  # one member's draws held at a time
            part = member.impute(x, draws, num_samples, seed, batch_size)
            fills.append(part[0])
            stddevs.append(part[1])
            if draws and rows is None:
                rows = part[2]
            elif draws:
                rows[picked == index] = part[2][picked == index]
        x = np.asarray(x, np.float32)
        filled, stddev = (part.numpy() for part in self._mix(fills, stddevs))
        outputs = (np.where(np.isnan(x), filled, x).astype(np.float32), np.where(np.isnan(x), stddev, 0.0)
                   .astype(np.float32))
        return outputs + (rows,) if draws else outputs

    def imputation(self, x, num_samples: int = IMPUTE_SAMPLES, seed: int = 0):
        """Tensors in and out: `(filled, stddev)` for rows `x` [B, D] with NaN gaps (the `impute` signature's)."""
        parts = [member.imputation(x, num_samples, seed) for member in self.members]
        filled, stddev = self._mix([part[0] for part in parts], [part[1] for part in parts])
        mask = tf.math.is_finite(x)
        return tf.where(mask, x, filled), tf.where(mask, 0.0, stddev)

    def _mix(self, fills, stddevs):
        """The mixture's mean and standard deviation, cell by cell (tensors)."""
        weights = tf.constant(self.weights, tf.float32)[:, tf.newaxis, tf.newaxis]
        return mixture_moments(weights, tf.stack(fills), tf.stack(stddevs))
