"""Raw data to the model's units inside the graph, and back: `Standardize` and `Whiten`.

A normaliser is an affine map `u = A^-1 (x - mean)` with statistics from the
training rows, held as non-trainable weights. It knows how to carry the decoder's
Gaussian in model units back to raw units: its mean (`inverse`, or `fold_output`
folded into the dense layer before it), each feature's standard deviation
(`raw_stddev` for per-feature sigmas, `raw_stddev_tril` for a lower-triangular
scale S), the distribution over raw rows (`raw_normal`, `raw_normal_tril`), and
the change of variables `log |det A|` (`log_det_jacobian`).
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import losses
from tfp_vae._keras import serializable, tf_keras
from tfp_vae.errors import TfpVaeError
from tfp_vae.heads import base_config
from tfp_vae.saving import RestorableLayer

tfd = tfp.distributions


FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def resolution(mean) -> np.ndarray:
    """float32's resolution of each feature's mean: a spread below it is a constant column to float32."""
    return np.finfo(np.float32).eps * np.abs(np.asarray(mean, np.float64))


def scale_floor(mean) -> np.ndarray:
    """The smallest scale a feature is divided by: its mean's float32 resolution, and float32's smallest normal."""
    return np.maximum(resolution(mean), FLOAT32_TINY)


def constant_columns(mean, stddev) -> np.ndarray:
    """Indices of the columns that are constant to float32: no spread beyond their mean's resolution."""
    stddev = np.asarray(stddev, np.float64)
    return np.flatnonzero((stddev == 0) | (stddev <= resolution(mean)))


def tiny_columns(mean, stddev) -> np.ndarray:
    """Indices of the columns that vary, but by less than float32's smallest normal number."""
    stddev = np.asarray(stddev, np.float64)
    return np.setdiff1d(np.flatnonzero(stddev < FLOAT32_TINY), constant_columns(mean, stddev))


@serializable
class Standardize(RestorableLayer, tf_keras.layers.Layer):
    """`(x - mean) / scale`, with the statistics held as non-trainable weights.

    `scale` is the feature's standard deviation, floored at `scale_floor`, so a
    constant column is kept rather than divided by zero.

    #### Example

    ```python
    layer = Standardize(input_size=2)
    layer.set_moments(mean=[1e4, 0.0], stddev=[1e-3, 1e6])
    layer(tf.constant([[1e4 + 1e-3, -1e6]]))  # ==> [[1., -1.]]
    ```
    """

    needs_covariance = False

    def __init__(self, input_size: int, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.mean = self.add_weight("mean", shape=[input_size], initializer="zeros", trainable=False)
        self.scale = self.add_weight("scale", shape=[input_size], initializer="ones", trainable=False)
        self.count = self.add_weight("count", shape=[], initializer="zeros", trainable=False)
        self.constant_ = np.zeros(input_size, bool)

    @property
    def is_adapted(self) -> bool:
        return bool(self.count.numpy() > 0)

    def set_moments(self, mean, stddev, count: float = 1.0, covariance=None, floor=None, constant=None) -> None:
        """Sets the statistics; `covariance` is what `Whiten` needs, and is not used here. `floor`: the least
        scale of each feature (default `scale_floor(mean)`); `constant`: the indices of the constant features
        (`constant_`; default `constant_columns(mean, stddev)`), for moments of transformed rows those of the raw."""
        mean, stddev = np.asarray(mean, np.float64), np.asarray(stddev, np.float64)
        floor = scale_floor(mean) if floor is None else np.asarray(floor, np.float64)
        self.mean.assign(mean.astype(np.float32))
        self.scale.assign(np.maximum(stddev, floor).astype(np.float32))
        self.count.assign(float(count))
        self.constant_ = np.zeros(len(mean), bool)
        self.constant_[constant_columns(mean, stddev) if constant is None else constant] = True

    def call(self, x, observed=None):
        """Model units; given `observed` (1 observed, 0 missing), a missing cell is its feature's centre (0)."""
        standardized = self.standardize(x)
        if observed is not None:
            standardized = tf.where(observed > 0, standardized, 0.0)
        return self.decorrelate(standardized)

    def standardize(self, x):
        return (x - self.mean) / self.scale

    def unstandardize(self, standardized):
        return standardized * self.scale + self.mean

    def decorrelate(self, standardized):
        """Model units from standardised units (the identity here)."""
        return standardized

    def standardized(self, u):
        """Standardised units from model units (the identity here)."""
        return u

    def standardized_factor(self, factor):
        """F' with F' F'^T the covariance, in standardised units, of a noise F F^T in model units [..., D, D]."""
        return factor

    def inverse(self, u):
        """Raw units from model units."""
        return self.unstandardize(self.standardized(u))

    def standardized_stddev(self, sigma):
        """Per-feature stddevs in standardised units of N(loc, diag(sigma^2)) in model units."""
        return sigma

    def standardized_stddev_tril(self, scale_tril):
        """Per-feature stddevs in standardised units of N(loc, S S^T) in model units."""
        return tf.norm(scale_tril, axis=-1)

    def raw_stddev(self, sigma):
        """The raw-unit standard deviation of each feature of N(loc, diag(sigma^2)) in model units."""
        return self.standardized_stddev(sigma) * self.scale

    def raw_stddev_tril(self, scale_tril):
        """The raw-unit standard deviation of each feature of N(loc, S S^T) in model units, S [..., D, D]."""
        return self.standardized_stddev_tril(scale_tril) * self.scale

    def raw_normal(self, loc, sigma):
        """N(loc, diag(sigma^2)) in model units, as a distribution over raw rows."""
        return tfd.Independent(tfd.Normal(self.inverse(loc), self.raw_stddev(sigma)), reinterpreted_batch_ndims=1)

    def raw_normal_tril(self, loc, scale_tril):
        """N(loc, S S^T) in model units, as a distribution over raw rows."""
        return tfd.MultivariateNormalTriL(self.inverse(loc), self.scale[:, tf.newaxis] * scale_tril)

    def raw_student_t(self, loc, sigma, df):
        """prod_d t_df(loc_d, sigma_d) in model units, as a distribution over raw rows."""
        return tfd.Independent(tfd.StudentT(df, self.inverse(loc), self.raw_stddev(sigma)),
                               reinterpreted_batch_ndims=1)

    def log_det_jacobian(self, mask=None):
        """sum log scale (over each row's observed features, given `mask`).

        What a density loses from model to raw units.
        """
        return losses.observed_sum(tf.math.log(self.scale), mask)

    def fold_output(self, kernel, bias):
        """`(kernel', bias')` with `self.inverse(h @ kernel + bias) == h @ kernel' + bias'`: raw units out.

        Only the way out folds: folding `(x - mean) / scale` into the next layer
        would subtract `mean / scale` after multiplying, which loses float32's
        digits to cancellation for any feature whose offset dwarfs its spread.
        """
        return kernel * self.scale, self.inverse(bias[tf.newaxis])[0]

    def get_config(self):
        return {**base_config(self), "input_size": self.input_size}


@serializable
class Whiten(Standardize):
    """Standardised, then decorrelated: `C^(-1/2) (x - mean) / scale` for the correlation matrix C.

    ZCA whitening: of all the maps that whiten the data it moves each feature
    least, so model unit d still mostly means feature d. A decoder whose noise is
    independent in these units has covariance `diag(scale) C^(1/2) diag(sigma^2)
    C^(1/2) diag(scale)` in raw units: correlated residuals, which strongly
    correlated measurements need, at the cost of three D x D products per call.
    Eigenvalues of C are floored at `EIGENVALUE_FLOOR`, so collinear columns stay
    finite; a constant column is left uncorrelated, its own unit as `Standardize`
    leaves it, so whitening changes nothing of its density.

    #### Example

    ```python
    layer = Whiten(input_size=2)
    layer.set_moments(mean=[0.0, 0.0], stddev=[1.0, 10.0], covariance=[[1.0, 8.0], [8.0, 100.0]])
    layer(tf.constant([[1.0, 10.0]]))  # ==> [[0.745, 0.745]]: correlation 0.8, unit variance
    ```
    """

    EIGENVALUE_FLOOR = 1e-6
    needs_covariance = True

    def __init__(self, input_size: int, **kwargs):
        super().__init__(input_size, **kwargs)
        self.unmixing = self.add_weight("unmixing", shape=[input_size, input_size], initializer="identity",
                                        trainable=False)
        self.mixing = self.add_weight("mixing", shape=[input_size, input_size], initializer="identity",
                                      trainable=False)
        self.mixing_cholesky = self.add_weight("mixing_cholesky", shape=[input_size, input_size],
                                               initializer="identity", trainable=False)
        self.log_det_mixing = self.add_weight("log_det_mixing", shape=[], initializer="zeros", trainable=False)

    def set_moments(self, mean, stddev, count: float = 1.0, covariance=None, floor=None, constant=None) -> None:
        if covariance is None:
            raise TfpVaeError("whitening needs the data's covariance: pass covariance=[D, D] "
                              "(tfp_vae.data.RunningMoments(covariance=True) keeps it)")
        super().set_moments(mean, stddev, count, floor=floor, constant=constant)
        scale = self.scale.numpy().astype(np.float64)
        correlation = np.asarray(covariance, np.float64) / np.outer(scale, scale)
        # A constant feature is its own unit, as standardised: not an eigenvalue floored far below the others.
        correlation[self.constant_], correlation[:, self.constant_] = 0.0, 0.0
        correlation[self.constant_, self.constant_] = 1.0
        eigenvalues, eigenvectors = np.linalg.eigh(correlation)
        eigenvalues = np.maximum(eigenvalues, self.EIGENVALUE_FLOOR)
        self.unmixing.assign(((eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T).astype(np.float32))
        mixing = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
        self.mixing.assign(mixing.astype(np.float32))
        self.mixing_cholesky.assign(np.linalg.cholesky(mixing).astype(np.float32))
        self.log_det_mixing.assign(0.5 * np.sum(np.log(eigenvalues)))

    def decorrelate(self, standardized):
        return tf.matmul(standardized, self.unmixing)

    def standardized(self, u):
        return tf.matmul(u, self.mixing)

    def standardized_factor(self, factor):
        return tf.matmul(self.mixing, factor)

    # Standardised units are C^(1/2) times model units (C^(1/2) is symmetric), so their covariance is
    # C^(1/2) S S^T C^(1/2): each feature's variance is a row norm of C^(1/2) S.
    def standardized_stddev(self, sigma):
        return tf.sqrt(tf.matmul(tf.square(sigma), tf.square(self.mixing)))

    def standardized_stddev_tril(self, scale_tril):
        return tf.norm(tf.matmul(self.mixing, scale_tril), axis=-1)

    def raw_normal(self, loc, sigma):
        return self._raw_normal(loc, tf.linalg.LinearOperatorDiag(sigma, is_positive_definite=True))

    def raw_normal_tril(self, loc, scale_tril):
        return self._raw_normal(loc, tf.linalg.LinearOperatorLowerTriangular(scale_tril, is_non_singular=True))

    def _raw_normal(self, loc, model_scale: tf.linalg.LinearOperator):
        # diag(scale) C^(1/2) S, with C^(1/2) as its Cholesky factors: solves and the log determinant
        # stay triangular, exact and free of mixing the features' scales in one float32 matrix.
        mixing_tril = tf.linalg.LinearOperatorLowerTriangular(self.mixing_cholesky, is_non_singular=True)
        raw_scale = tf.linalg.LinearOperatorComposition([
            tf.linalg.LinearOperatorDiag(self.scale, is_positive_definite=True),
            mixing_tril, tf.linalg.LinearOperatorAdjoint(mixing_tril), model_scale])
        return tfd.MultivariateNormalLinearOperator(self.inverse(loc), raw_scale)

    def log_det_jacobian(self, mask=None):
        # With gaps the model scores each row's observed cells in standardised units (`tfp_vae.gaps`), where only
        # the standardisation's Jacobian remains.
        if mask is not None:
            return super().log_det_jacobian(mask)
        return super().log_det_jacobian() + self.log_det_mixing

    def fold_output(self, kernel, bias):
        return super().fold_output(tf.matmul(kernel, self.mixing), bias)


NORMALIZERS = {"standardize": Standardize, "whiten": Whiten}
