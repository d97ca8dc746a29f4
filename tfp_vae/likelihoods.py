r"""The decoder's likelihood p(x|z): one class each, on one seam.

A likelihood turns the decoder's last hidden layer into the scale of p(u|z) in
model units (its mean comes from the model's `decoder_loc` layer), and knows

- `params_size(D)`: how many scale numbers it outputs per row, and its initial
  parameters (every one starts at sigma = 1);
- `distribution(loc, raw)`: p(u|z) in model units, from its `tfp.layers` head;
- `log_prob(u, loc, scale)`: log p(u|z) per row, in model units;
- `raw_stddev` / `raw_distribution`: each feature's standard deviation and the
  distribution over raw rows, through the model's normaliser;
- `half_width`: half the central interval of each feature, in raw units (for a
  Gaussian, the normal quantile times its standard deviation; for a Student-t,
  the t quantile times its scale);
- `chunk_width(D)`: numbers per row and draw that evaluation's chunks are sized by;
- `training_scale(u, loc, scale, mask)`: the scale a training step uses (only
  the sigma-VAE's `OptimalNormal` changes it, from the batch's errors in its
  observed cells).

Names (`LIKELIHOODS`) are for the boundary alone: the config, the command line
and the model's `get_config`. Scales are in model units: multiples of each
feature's (standardised or whitened) spread.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import heads, losses
from tfp_vae._keras import serializable, tf_keras
from tfp_vae.errors import TfpVaeError
from tfp_vae.saving import RestorableLayer


def unit_raw(min_scale: float) -> float:
    """The raw parameter whose floored softplus is 1."""
    return float(heads.softplus_inverse(np.float32(1.0 - min_scale)))


def raw_from_scale(scale, min_scale: float):
    """The raw parameter of a given floored-softplus scale (the inverse of `heads.floored_softplus`)."""
    return heads.softplus_inverse(tf.maximum(scale - min_scale, 1e-6))


class DiagonalNormal(RestorableLayer, tf_keras.layers.Layer):
    """p(u|z) = prod_d N(u_d; loc_d, sigma_d): the base of the per-feature-sigma likelihoods.

    A subclass says where the D raw sigma parameters come from (`call`).
    """

    HEAD = heads.DecoderNormal
    log_prob = staticmethod(losses.gaussian_log_prob)

    def __init__(self, event_size: int, min_scale: float = 1e-3, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.event_size = event_size
        self.min_scale = min_scale
        self.seed = seed
        self.head = self.HEAD(event_size, min_scale, name="head")

    @staticmethod
    def params_size(event_size: int) -> int:
        return event_size

    @staticmethod
    def chunk_width(event_size: int) -> int:
        return event_size

    def broadcast(self, per_feature, hidden):
        """One raw parameter per feature, the same for every row of `hidden`."""
        return tf.broadcast_to(per_feature, tf.concat([tf.shape(hidden)[:-1], [self.event_size]], 0))

    def scale(self, raw):
        """sigma [..., D] from the raw parameters."""
        return heads.floored_softplus(raw, self.min_scale)

    def distribution(self, loc, raw):
        return self.head(tf.concat([loc, raw], axis=-1))

    def parameters(self, loc, raw):
        """`(loc, sigma)` of `distribution(loc, raw)`."""
        normal = self.distribution(loc, raw).distribution  # the Independent's Normal
        return normal.loc, normal.scale

    def raw_stddev(self, normalizer, scale):
        return normalizer.raw_stddev(scale)

    def raw_distribution(self, normalizer, loc, scale):
        return normalizer.raw_normal(loc, scale)

    def noise_factor(self, scale):
        """F [..., D, D] with F F^T the noise covariance in model units (whitening mixes it; gaps need it whole)."""
        return tf.linalg.diag(scale)

    def half_width(self, normalizer, scale, probability: float):
        """Half the central `probability` interval of each feature in raw units (its marginal is Gaussian)."""
        return tf.math.ndtri(0.5 + 0.5 * probability) * self.raw_stddev(normalizer, scale)

    def training_scale(self, u, loc, scale, mask=None):
        return scale

    def get_config(self):
        return {**heads.base_config(self), "event_size": self.event_size, "min_scale": self.min_scale,
                "seed": self.seed}


@serializable
class LearnedNormal(DiagonalNormal):
    """sigma(z): a dense layer on the decoder's last hidden layer (`decoder_scale="learned"`).

    #### Example

    ```python
    likelihood = LearnedNormal(event_size=3)
    raw = likelihood(tf.zeros([8, 16]))      # [8, 3]
    likelihood.scale(raw)                     # ==> 1 everywhere at the start
    ```
    """

    def __init__(self, event_size: int, min_scale: float = 1e-3, seed=None, **kwargs):
        super().__init__(event_size, min_scale, seed, **kwargs)
        self.dense = heads.Dense(
            self.dense_size(event_size), name="dense", kernel_initializer=heads.seeded_initializer(seed, 0),
            bias_initializer=tf_keras.initializers.Constant(self.initial_params(event_size, unit_raw(min_scale))))

    @classmethod
    def dense_size(cls, event_size: int) -> int:
        """Outputs of the dense layer on the hidden layer: all of `params_size` unless some are weights."""
        return cls.params_size(event_size)

    @staticmethod
    def initial_params(event_size: int, unit: float) -> np.ndarray:
        return np.full(event_size, unit, np.float32)

    def call(self, hidden):
        return self.dense(hidden)


@serializable
class SharedNormal(DiagonalNormal):
    """One learned sigma per feature, the same for every z (`decoder_scale="shared"`).

    #### Example

    ```python
    likelihood = SharedNormal(event_size=3)
    likelihood.scale(likelihood(tf.zeros([8, 16])))  # ==> 1 everywhere at the start
    ```
    """

    def __init__(self, event_size: int, min_scale: float = 1e-3, seed=None, **kwargs):
        super().__init__(event_size, min_scale, seed, **kwargs)
        self.raw_scale = self.add_weight(
            "raw_scale", shape=[event_size], initializer=tf_keras.initializers.Constant(unit_raw(min_scale)))

    def call(self, hidden):
        return self.broadcast(self.raw_scale, hidden)


@serializable
class OptimalNormal(DiagonalNormal):
    """The sigma-VAE's sigma (Rybkin et al. 2021, `decoder_scale="optimal"`).

    A training step uses each feature's root mean squared error over the batch,
    the sigma that maximises the batch's likelihood for its means; evaluation uses
    a running average of it (momentum `MOMENTUM`).

    #### Example

    ```python
    likelihood = OptimalNormal(event_size=1)
    likelihood.training_scale(tf.ones([2, 1]), tf.constant([[0.5], [1.5]]), None)  # ==> [0.5]
    likelihood.scale(likelihood(tf.zeros([1, 16])))  # ==> close to 0.5 after many such steps
    ```
    """

    MOMENTUM = 0.95

    def __init__(self, event_size: int, min_scale: float = 1e-3, seed=None, **kwargs):
        super().__init__(event_size, min_scale, seed, **kwargs)
        self.mean_squared_error = self.add_weight(
            "mean_squared_error", shape=[event_size], initializer="ones", trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def call(self, hidden):
        return self.broadcast(raw_from_scale(tf.sqrt(self.mean_squared_error), self.min_scale), hidden)

    def training_scale(self, u, loc, scale, mask=None):
        squared_error = tf.reshape(tf.square(u - loc), [-1, self.event_size])
        observed = tf.ones_like(squared_error) if mask is None else tf.reshape(
            tf.broadcast_to(mask, tf.shape(u - loc)), [-1, self.event_size])
        total, count = global_batch_sums(tf.stop_gradient(squared_error * observed), observed)
        # A feature missing from the whole batch keeps its running error.
        batch_mse = tf.where(count > 0, total / tf.maximum(count, 1.0), self.mean_squared_error)
        self.mean_squared_error.assign(
            self.MOMENTUM * self.mean_squared_error + (1.0 - self.MOMENTUM) * batch_mse)
        return losses.optimal_scale(batch_mse, self.min_scale)


@serializable
class FixedNormal(DiagonalNormal):
    """sigma = `fixed_scale` for every feature (`decoder_scale="fixed"`).

    #### Example

    ```python
    likelihood = FixedNormal(event_size=3, fixed_scale=0.5)
    likelihood.scale(likelihood(tf.zeros([8, 16])))  # ==> 0.5 everywhere
    ```
    """

    def __init__(self, event_size: int, min_scale: float = 1e-3, seed=None, fixed_scale: float = 1.0, **kwargs):
        if not fixed_scale > min_scale:
            raise TfpVaeError(f"fixed_scale must exceed min_scale={min_scale}, got {fixed_scale}")
        super().__init__(event_size, min_scale, seed, **kwargs)
        self.fixed_scale = fixed_scale

    def call(self, hidden):
        return self.broadcast(raw_from_scale(tf.fill([self.event_size], self.fixed_scale), self.min_scale), hidden)

    def get_config(self):
        return {**super().get_config(), "fixed_scale": self.fixed_scale}


@serializable
class FullCovarianceNormal(LearnedNormal):
    """p(u|z) = N(loc, S(z) S(z)^T), S lower-triangular from the network (`decoder_scale="full"`).

    Features whose noise is correlated, differently for each z (derived columns,
    totals, ratios), get a residual covariance a diagonal cannot give, at the cost
    of `D (D + 1) / 2` outputs and a triangular solve per row. The scale is the
    lower-triangular S [..., D, D], starting at the identity.

    #### Example

    ```python
    likelihood = FullCovarianceNormal(event_size=3)
    raw = likelihood(tf.zeros([8, 16]))      # [8, 6]
    likelihood.scale(raw)                     # ==> the 3 x 3 identity for every row at the start
    ```
    """

    HEAD = heads.DecoderFullNormal
    log_prob = staticmethod(losses.gaussian_log_prob_tril)

    @staticmethod
    def params_size(event_size: int) -> int:
        return event_size * (event_size + 1) // 2

    @staticmethod
    def chunk_width(event_size: int) -> int:
        return event_size**2

    @staticmethod
    def initial_params(event_size: int, unit: float) -> np.ndarray:
        rows, columns = np.tril_indices(event_size)
        return np.where(rows == columns, unit, 0.0).astype(np.float32)

    def scale(self, raw):
        return heads.fill_scale_tril(raw, self.event_size, diagonal_floor=self.min_scale)

    def parameters(self, loc, raw):
        normal = self.distribution(loc, raw)
        return normal.loc, normal.scale.to_dense()

    def raw_stddev(self, normalizer, scale):
        return normalizer.raw_stddev_tril(scale)

    def raw_distribution(self, normalizer, loc, scale):
        return normalizer.raw_normal_tril(loc, scale)

    def noise_factor(self, scale):
        return scale


@serializable
class StudentT(LearnedNormal):
    """p(u|z) = prod_d t_{df_d}(u_d; loc_d, sigma_d(z)): heavy tails, df learned per feature.

    sigma(z) comes from the network as for `LearnedNormal`; the degrees of freedom
    are one weight per feature, above 2 so that each feature's variance exists
    (`heads.degrees_of_freedom`), starting at `INITIAL_DF` (nearly Gaussian). The
    scale this likelihood passes around is the pair `(sigma, df)`. It works in
    standardised units (`normalization="standardize"`): whitening mixes the
    features, and a mix of Student-t variables is not one.

    #### Example

    ```python
    likelihood = StudentT(event_size=3)
    sigma, df = likelihood.scale(likelihood(tf.zeros([8, 16])))   # 1 and 30 everywhere at the start
    ```
    """

    HEAD = heads.DecoderStudentT
    INITIAL_DF = 30.0

    def __init__(self, event_size: int, min_scale: float = 1e-3, seed=None, **kwargs):
        super().__init__(event_size, min_scale, seed, **kwargs)
        self.raw_df = self.add_weight(
            "raw_df", shape=[event_size],
            initializer=tf_keras.initializers.Constant(heads.raw_degrees_of_freedom(self.INITIAL_DF)))

    @staticmethod
    def params_size(event_size: int) -> int:
        return 2 * event_size

    @staticmethod
    def dense_size(event_size: int) -> int:
        return event_size

    def call(self, hidden):
        return tf.concat([self.dense(hidden), self.broadcast(self.raw_df, hidden)], axis=-1)

    def scale(self, raw):
        return (heads.floored_softplus(raw[..., :self.event_size], self.min_scale),
                heads.degrees_of_freedom(raw[..., self.event_size:]))

    def parameters(self, loc, raw):
        student_t = self.distribution(loc, raw).distribution
        return student_t.loc, (student_t.scale, student_t.df)

    def log_prob(self, u, loc, scale, mask=None):
        sigma, df = scale
        return losses.student_t_log_prob(u, loc, sigma, df, mask)

    def raw_stddev(self, normalizer, scale):
        sigma, df = scale
        return normalizer.raw_stddev(sigma * tf.sqrt(df / (df - 2.0)))

    def raw_distribution(self, normalizer, loc, scale):
        return normalizer.raw_student_t(loc, *scale)

    def half_width(self, normalizer, scale, probability: float):
        sigma, df = scale
        quantile = tfp.distributions.StudentT(df, 0.0, 1.0).quantile(0.5 + 0.5 * probability)
        return normalizer.raw_stddev(quantile * sigma)


LIKELIHOODS = {"learned": LearnedNormal, "shared": SharedNormal, "optimal": OptimalNormal, "fixed": FixedNormal,
               "full": FullCovarianceNormal, "student_t": StudentT}


def make_likelihood(decoder_scale: str, event_size: int, min_scale: float, seed, fixed_scale: float, **kwargs):
    """The likelihood a `decoder_scale` name stands for; `fixed_scale` reaches `FixedNormal` alone."""
    if decoder_scale not in LIKELIHOODS:
        raise TfpVaeError(f"decoder_scale must be one of {tuple(LIKELIHOODS)}, got {decoder_scale!r}")
    likelihood = LIKELIHOODS[decoder_scale]
    options = {"fixed_scale": fixed_scale} if likelihood is FixedNormal else {}
    return likelihood(event_size, min_scale, seed, **options, **kwargs)


def global_batch_sums(rows, observed):
    """Sums over axis 0 of the whole global batch: of `rows`, and of `observed` (its cells' count), across
    replicas when training is distributed."""
    total, count = tf.reduce_sum(rows, axis=0), tf.reduce_sum(observed, axis=0)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
    return total, count
