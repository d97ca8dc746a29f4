r"""Per-feature monotone transforms of the raw data, before the normaliser: `Identity`, `Log` and `YeoJohnson`.

A skewed column (counts, prices, concentrations) is far from Gaussian however it
is scaled; a transform `t = T(x)`, one increasing map per feature, can make it
close to one. The model then works on `t`, and its likelihood stays a density of
the raw numbers through the change of variables

    log p(x) = log p(t) + sum_d log T_d'(x_d)                       (`log_jacobian`)

`Log` takes t = log x of each feature whose training values are all positive
(prices, concentrations, sizes) and leaves the others as they are. A Gaussian of
log x is a log-normal of x, so every fill, draw and interval of such a feature
stays positive, which no transform of the whole real line onto itself can
promise; and a spread that grows with the value (a price's) becomes one spread.
It fits nothing but which features to take, so it is the simplest transform after
none. Its raw mean and standard deviation are the log-normal's, exp(m + sd^2 / 2)
and that times sqrt(exp(sd^2) - 1). A value at or below 0 in a feature the
training rows had all positive lies outside the support: it is read as float32's
smallest normal number (1.2e-38), so its density is negligible (its row's
log-likelihood far below any other's), never NaN.

`YeoJohnson` is the Yeo-Johnson power transform of each standardised feature,
s = (x - mean) / scale:

    t = ((1 + s)^lam - 1) / lam                 s >= 0
    t = -((1 - s)^(2 - lam) - 1) / (2 - lam)    s < 0

lam = 1 is the identity, lam < 1 pulls in a long right tail (lam -> 0: log(1 + s)),
lam > 1 a long left one. Keeping lam in (0, 2) makes it a bijection of the whole
real line, so every sample and interval of the model maps back to a finite raw
number. lam starts at each feature's maximum-likelihood value on the training
rows (`fit_yeo_johnson`: the lam whose transformed feature is most Gaussian) and
is then trained with the rest of the model, which learns the marginals and the
dependence between features together.

Past the range of its training rows each feature's transform is continued by its
tangent at the nearer end (`tailed_yeo_johnson`; linear tails, as neural spline
flows have). A power learned on one side of the data says nothing of the values
beyond it, and followed there it can run away: with lam near 0 the transform is
nearly log(1 + s), whose inverse is exponential, so a fill of a value above
every training value could land tens of standard deviations out. With the tails,
raw and transformed units are linear to each other there, as in the plain model.

Raw-unit outputs come from the decoder's Gaussian marginal of each feature in
transformed units, N(m, sd): the central interval maps exactly (`T^-1(m +- q sd)`),
and the mean and standard deviation are `E[T^-1(m + sd Z)]` and its spread by
Gauss-Hermite quadrature (`QUADRATURE_NODES`), all with stock TensorFlow ops.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae._keras import serializable, tf_keras
from tfp_vae.gaps import in_float64
from tfp_vae.losses import observed_sum
from tfp_vae.heads import base_config
from tfp_vae.normalization import FLOAT32_TINY, scale_floor
from tfp_vae.saving import RestorableLayer

tfb, tfd = tfp.bijectors, tfp.distributions

QUADRATURE_NODES = 32
LAMBDA_BOUND = 2.0  # lam in (0, LAMBDA_BOUND): the transform maps the real line onto itself
LAMBDA_MARGIN = 1e-2  # fitted lam is kept this far inside the bound, so its logit stays finite
GOLDEN_STEPS = 40
FIT_ROWS = 20_000  # training rows a transform is fitted on, and the normaliser's moments then taken from


def yeo_johnson(s, lam):
    """The Yeo-Johnson transform of `s` with power `lam` in (0, 2), elementwise."""
    magnitude = tf.math.log1p(tf.abs(s))
    return tf.where(s >= 0, tf.math.expm1(lam * magnitude) / lam,
                    -tf.math.expm1((2.0 - lam) * magnitude) / (2.0 - lam))


def yeo_johnson_inverse(t, lam):
    """`s` with `yeo_johnson(s, lam) == t`."""
    positive = tf.math.expm1(tf.math.log1p(lam * tf.maximum(t, 0.0)) / lam)
    negative = -tf.math.expm1(tf.math.log1p((2.0 - lam) * tf.maximum(-t, 0.0)) / (2.0 - lam))
    return tf.where(t >= 0, positive, negative)


def yeo_johnson_log_derivative(s, lam):
    """log dt/ds, elementwise: (lam - 1) log(1 + s) for s >= 0, (1 - lam) log(1 - s) below."""
    return tf.where(s >= 0, lam - 1.0, 1.0 - lam) * tf.math.log1p(tf.abs(s))


def transformed_end(end, lam):
    """`yeo_johnson` of one end of a range; an infinite end stays infinite, and passes no NaN gradient to lam."""
    finite = tf.math.is_finite(end)
    return tf.where(finite, yeo_johnson(tf.where(finite, end, 0.0), lam), end)


def tailed_yeo_johnson(s, lam, low, high):
    """`yeo_johnson` inside [low, high], continued beyond by its tangent at the nearer end, elementwise."""
    edge = tf.clip_by_value(s, low, high)
    return yeo_johnson(edge, lam) + tf.exp(yeo_johnson_log_derivative(edge, lam)) * (s - edge)


def tailed_yeo_johnson_inverse(t, lam, low, high):
    """`s` with `tailed_yeo_johnson(s, lam, low, high) == t`."""
    edge = tf.clip_by_value(t, transformed_end(low, lam), transformed_end(high, lam))
    s_edge = yeo_johnson_inverse(edge, lam)
    return s_edge + (t - edge) / tf.exp(yeo_johnson_log_derivative(s_edge, lam))


def tailed_yeo_johnson_log_derivative(s, lam, low, high):
    """log dt/ds of `tailed_yeo_johnson`: constant beyond [low, high]."""
    return yeo_johnson_log_derivative(tf.clip_by_value(s, low, high), lam)


def positive_columns(stats) -> np.ndarray:
    """Which features `Log` takes: those whose least value over the training rows (`stats.minimum`) is above 0."""
    return stats.minimum > 0


def positive_log(x, logged):
    """log x where `logged` is 1 (a value <= 0 there as `FLOAT32_TINY`), x where it is 0, elementwise."""
    return tf.where(logged > 0, tf.math.log(tf.maximum(tf.where(logged > 0, x, 1.0), FLOAT32_TINY)), x)


def positive_log_inverse(t, logged):
    """`x` with `positive_log(x, logged) == t`: exp(t) where logged, t elsewhere."""
    return tf.where(logged > 0, tf.exp(t), t)


def positive_log_derivative(x, logged):
    """log dt/dx for `positive_log`: -log x where logged, 0 elsewhere."""
    return -tf.where(logged > 0, positive_log(x, logged), 0.0)


def log_normal_moments(mean, stddev):
    """The mean and standard deviation of exp(t) for t ~ N(mean, stddev): inf past float32's range, never NaN."""
    variance = tf.square(stddev)
    log_mean = mean + 0.5 * variance
    return tf.exp(log_mean), tf.exp(log_mean + 0.5 * tf.math.log(tf.math.expm1(variance)))


@in_float64
def quadrature_moments(mean, stddev, lam, low, high, nodes, weights):
    """E[s] and sd[s] of s = `tailed_yeo_johnson_inverse`(t, lam, low, high) for t ~ N(mean, stddev) [..., D], by
    Gauss-Hermite.

    In standardised units, whatever the feature's offset, and in float64: without
    tails (an infinite range) and with a small lam the far nodes' s passes float32's
    range long before the mean does. A mean beyond float64's is inf, and its
    standard deviation inf, never NaN.
    """
    s = tailed_yeo_johnson_inverse(mean[..., tf.newaxis] + stddev[..., tf.newaxis] * nodes, lam[:, tf.newaxis],
                                   low[:, tf.newaxis], high[:, tf.newaxis])
    s_mean = tf.reduce_sum(weights * s, axis=-1)
    s_variance = tf.reduce_sum(weights * tf.square(s - s_mean[..., tf.newaxis]), axis=-1)
    return s_mean, tf.where(tf.math.is_finite(s_mean), tf.sqrt(s_variance), np.inf)


def profile_log_likelihood(s: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Per feature, the mean log-likelihood of rows `s` [N, D] under the best Gaussian for `yeo_johnson(s, lam)`.

    NaN cells are missing: each feature's figure is over its observed cells.
    """
    observed = tf.constant(~np.isnan(s), tf.float64)
    count = tf.reduce_sum(observed, axis=0)
    s, lam = tf.constant(np.nan_to_num(s), tf.float64), tf.constant(lam, tf.float64)
    t = yeo_johnson(s, lam)
    mean = tf.reduce_sum(observed * t, axis=0) / count
    variance = tf.maximum(tf.reduce_sum(observed * tf.square(t - mean), axis=0) / count, np.finfo(np.float64).tiny)
    log_derivative = tf.reduce_sum(observed * yeo_johnson_log_derivative(s, lam), axis=0) / count
    return (-0.5 * tf.math.log(variance) + log_derivative).numpy()


def fit_yeo_johnson(s: np.ndarray) -> np.ndarray:
    """Each feature's maximum-likelihood lam in [LAMBDA_MARGIN, 2 - LAMBDA_MARGIN] for standardised rows `s` [N, D].

    A coarse grid finds the best bracket, golden-section search narrows it.
    """
    low, high = LAMBDA_MARGIN, LAMBDA_BOUND - LAMBDA_MARGIN
    grid = np.linspace(low, high, 21)
    scores = np.stack([profile_log_likelihood(s, np.full(s.shape[1], lam)) for lam in grid])
    best = np.argmax(scores, axis=0)
    step = grid[1] - grid[0]
    left, right = np.maximum(grid[best] - step, low), np.minimum(grid[best] + step, high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(GOLDEN_STEPS):
        inner_left, inner_right = right - ratio * (right - left), left + ratio * (right - left)
        keep_left = profile_log_likelihood(s, inner_left) >= profile_log_likelihood(s, inner_right)
        right = np.where(keep_left, inner_right, right)
        left = np.where(keep_left, left, inner_left)
    return (left + right) / 2.0


class YeoJohnsonBijector(tfb.AutoCompositeTensorBijector):
    """Raw x to transformed t, elementwise: `tailed_yeo_johnson((x - mean) / scale, lam, low, high)`."""

    def __init__(self, mean, scale, lam, low, high, name="yeo_johnson"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._mean, self._scale, self._lam, self._low, self._high = mean, scale, lam, low, high
            super().__init__(forward_min_event_ndims=0, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return {name: tfp.util.ParameterProperties() for name in ("mean", "scale", "lam", "low", "high")}

    def _forward(self, x):
        return tailed_yeo_johnson((x - self._mean) / self._scale, self._lam, self._low, self._high)

    def _inverse(self, t):
        return tailed_yeo_johnson_inverse(t, self._lam, self._low, self._high) * self._scale + self._mean

    def _forward_log_det_jacobian(self, x):
        return (tailed_yeo_johnson_log_derivative((x - self._mean) / self._scale, self._lam, self._low, self._high)
                - tf.math.log(self._scale))


class PositiveLogBijector(tfb.AutoCompositeTensorBijector):
    """Raw x to transformed t, elementwise: `positive_log(x, logged)`."""

    def __init__(self, logged, name="positive_log"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._logged = logged
            super().__init__(forward_min_event_ndims=0, parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return {"logged": tfp.util.ParameterProperties()}

    def _forward(self, x):
        return positive_log(x, self._logged)

    def _inverse(self, t):
        return positive_log_inverse(t, self._logged)

    def _forward_log_det_jacobian(self, x):
        return positive_log_derivative(x, self._logged)


@serializable
class Identity(RestorableLayer, tf_keras.layers.Layer):
    """No transform (`transform="none"`): the model works on the raw numbers, through its normaliser alone.

    #### Example

    ```python
    layer = Identity(input_size=2)
    layer(tf.constant([[1.0, -2.0]]))   # ==> [[1., -2.]]
    layer.log_jacobian(x)               # ==> 0.
    ```
    """

    needs_rows = False

    def __init__(self, input_size: int, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size

    def call(self, x):
        return x

    def inverse(self, t):
        return t

    def log_jacobian(self, x, mask=None):
        """sum_d log T_d'(x_d) per row (over its observed features, given `mask`): 0, as a scalar."""
        return tf.constant(0.0)

    def raw_outputs(self, mean, stddev, half_width):
        """Raw `(mean, stddev, lower, upper)` of each feature from its marginal in transformed units."""
        return mean, stddev, mean - half_width, mean + half_width

    def transformed_scale(self, scale, at):
        """Raw scales `scale` [D] of values near `at` [D], in transformed units: `scale T'(at)`."""
        return np.asarray(scale, np.float64)

    def raw_distribution(self, distribution):
        """A distribution over transformed rows, as one over raw rows."""
        return distribution

    def get_config(self):
        return {**base_config(self), "input_size": self.input_size}


class FittedTransform(Identity):
    """A transform fitted to the training rows (`fit`), whose raw distribution is its bijector's image."""

    needs_rows = True

    def fit(self, stats, rows) -> None:
        """Fits the transform to training rows: their moments `stats` (`tfp_vae.data.RunningMoments`, over every
        training row) and `rows` (some of them)."""
        raise NotImplementedError

    def bijector(self) -> tfb.Bijector:
        """Raw x to transformed t."""
        raise NotImplementedError

    def call(self, x):
        return self.bijector().forward(x)

    def inverse(self, t):
        return self.bijector().inverse(t)

    def log_jacobian(self, x, mask=None):
        return observed_sum(self.bijector().forward_log_det_jacobian(x, event_ndims=0), mask)

    def transformed_scale(self, scale, at):
        log_derivative = self.bijector().forward_log_det_jacobian(np.asarray(at, np.float32), event_ndims=0)
        return np.asarray(scale, np.float64) * np.exp(log_derivative.numpy().astype(np.float64))

    def raw_distribution(self, distribution):
        return tfd.TransformedDistribution(distribution, tfb.Invert(self.bijector()))


@serializable
class Log(FittedTransform):
    """The logarithm of each feature whose training values are all positive (`transform="log"`); the others kept.

    `fit` takes a feature when its least value over the training rows is above 0
    (`logged`, 1 or 0), and keeps each feature's raw standard deviation (`scale`,
    the spread reports compare the decoder's with).

    #### Example

    ```python
    layer = Log(input_size=2)
    rows = np.array([[1.0, -1.0], [np.e, 2.0]])
    layer.fit(moments(rows), rows)
    layer.logged                                 # ==> [1., 0.]: the second column has a negative value
    layer(tf.constant([[np.e**2, -3.0]]))        # ==> [[2., -3.]]
    ```
    """

    def __init__(self, input_size: int, **kwargs):
        super().__init__(input_size, **kwargs)
        self.logged = self.add_weight("logged", shape=[input_size], initializer="zeros", trainable=False)
        self.scale = self.add_weight("scale", shape=[input_size], initializer="ones", trainable=False)

    def fit(self, stats, rows) -> None:
        self.logged.assign(positive_columns(stats).astype(np.float32))
        self.scale.assign(stats.stddev.astype(np.float32))

    def bijector(self) -> PositiveLogBijector:
        return PositiveLogBijector(self.logged)

    def raw_outputs(self, mean, stddev, half_width):
        logged = self.logged > 0
        raw_mean, raw_stddev = log_normal_moments(tf.where(logged, mean, 0.0), tf.where(logged, stddev, 0.0))
        return (tf.where(logged, raw_mean, mean), tf.where(logged, raw_stddev, stddev),
                self.inverse(mean - half_width), self.inverse(mean + half_width))


@serializable
class YeoJohnson(FittedTransform):
    """A learned Yeo-Johnson power transform of each standardised feature (`transform="yeo_johnson"`).

    `fit` sets each feature's mean and scale, its range over the training rows
    (`low`, `high`, standardised: the transform's tangent continues it beyond) and
    its maximum-likelihood lam; lam then trains with the model (a weight,
    `2 sigmoid(raw_lambda)`). The marginal in transformed units must be Gaussian
    for `raw_outputs`' quadrature. Unfitted, or read from a file written before the
    range was kept, the range is the whole line: no tails.

    #### Example

    ```python
    layer = YeoJohnson(input_size=1)
    rows = np.random.lognormal(size=[1000, 1])
    layer.fit(moments(rows), rows)
    layer.lam                                   # ==> about 0.2: the long right tail pulled in
    ```
    """

    def __init__(self, input_size: int, **kwargs):
        super().__init__(input_size, **kwargs)
        self.mean = self.add_weight("mean", shape=[input_size], initializer="zeros", trainable=False)
        self.scale = self.add_weight("scale", shape=[input_size], initializer="ones", trainable=False)
        self.raw_lambda = self.add_weight("raw_lambda", shape=[input_size], initializer="zeros")
        self.low = self.add_weight("low", shape=[input_size], initializer=tf_keras.initializers.Constant(-np.inf),
                                   trainable=False)
        self.high = self.add_weight("high", shape=[input_size], initializer=tf_keras.initializers.Constant(np.inf),
                                    trainable=False)
        nodes, weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
        self.quadrature_nodes = tf.constant(np.sqrt(2.0) * nodes, tf.float64)
        self.quadrature_weights = tf.constant(weights / np.sqrt(np.pi), tf.float64)

    @property
    def lam(self):
        return LAMBDA_BOUND * tf.sigmoid(self.raw_lambda)

    def fit(self, stats, rows) -> None:
        """Standardises with the moments `stats`, takes each feature's range from them, and sets lam to its
        maximum-likelihood value on `rows`."""
        mean = np.asarray(stats.mean, np.float64)
        scale = np.maximum(np.asarray(stats.stddev, np.float64), scale_floor(mean))
        lam = fit_yeo_johnson((np.asarray(rows, np.float64) - mean) / scale)
        self.mean.assign(mean.astype(np.float32))
        self.scale.assign(scale.astype(np.float32))
        self.low.assign(((stats.minimum - mean) / scale).astype(np.float32))
        self.high.assign(((stats.maximum - mean) / scale).astype(np.float32))
        self.raw_lambda.assign(np.log(lam / (LAMBDA_BOUND - lam)).astype(np.float32))

    def load_own_variables(self, store):
        """Reads a file written before the range was kept (raw_lambda, mean, scale) with no tails, as it was."""
        if len(store.keys()) == 3:
            for variable, key in zip([self.raw_lambda, self.mean, self.scale], ["0", "1", "2"]):
                variable.assign(store[key])
            return
        super().load_own_variables(store)

    def bijector(self) -> YeoJohnsonBijector:
        return YeoJohnsonBijector(self.mean, self.scale, self.lam, self.low, self.high)

    def raw_outputs(self, mean, stddev, half_width):
        s_mean, s_stddev = quadrature_moments(mean, stddev, self.lam, self.low, self.high, self.quadrature_nodes,
                                              self.quadrature_weights)
        return (s_mean * self.scale + self.mean, s_stddev * self.scale,
                self.inverse(mean - half_width), self.inverse(mean + half_width))


TRANSFORMS = {"none": Identity, "log": Log, "yeo_johnson": YeoJohnson}
