r"""Variational autoencoders for real-valued data, as Keras models.

`GaussianVAE` answers the question "how do I weigh MSE against the KL term?":
give the decoder a likelihood and let the evidence lower bound weigh the terms.

    u          = (x - mean) / scale                 standardised inside the graph
                 (normalization="whiten": C^(-1/2) (x - mean) / scale, C the correlation matrix;
                  transform="log" or "yeo_johnson": of t = T(x), a monotone transform of each feature)
    q(z|x)     = N(m(u), L(u) L(u)^T)               tfp.layers.MultivariateNormalTriL
    z          = m + L eps,  eps ~ N(0, I)          reparameterised
    p(u|z)     = N(mu(z), diag(sigma(z)^2))         tfp.layers.IndependentNormal, sigma >= min_scale
                 (decoder_scale="full": N(mu(z), S(z) S(z)^T), tfp.layers.MultivariateNormalTriL)
    distortion = -log p(x|z) = -log p(u|z) + sum_d log scale_d    (a density of the raw data;
                                              whitened: + 0.5 log det C; transformed: - sum_d log T_d'(x_d))
    rate       = KL(q(z|x) || N(0, I))              analytic
    loss       = distortion + beta * rate           (-ELBO at beta = 1)

Every reported number is in the raw data's units: means, standard deviations,
samples, and log-densities (through the change-of-variables term
`sum_d log scale_d`). The standardisation only keeps the network's numbers near
one, so features at scales 1e-3 and 1e6 train side by side.

`VariationalAutoencoder` holds what `GaussianVAE` and the question's model
(`tfp_vae.question.QuestionVAE`) share: the training and test steps, the metrics,
and the tensor-in, tensor-out methods that the SavedModel export calls.
"""

import functools
import weakref
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import gaps, heads, losses, saving
from tfp_vae._keras import serializable, tf_keras
from tfp_vae.config import FIXED_DEFAULTS, column_indices, incompatibility
from tfp_vae.data import RunningMoments, check_block, features_of, first_rows, moments, require_2d
from tfp_vae.errors import DataError, TfpVaeError, warn
from tfp_vae.likelihoods import make_likelihood, raw_from_scale
from tfp_vae.missingness import MECHANISMS
from tfp_vae.normalization import NORMALIZERS, constant_columns, scale_floor, tiny_columns
from tfp_vae.transforms import FIT_ROWS, TRANSFORMS

tfd = tfp.distributions

SCORE_SAMPLES = 16
SCORE_ROWS = 1024
IMPUTE_SAMPLES = 1000  # importance samples per row when filling gaps
IMPUTE_ROWS = 64  # rows filled at a time, at most
DRAW_NUMBERS = 4_000_000  # numbers per tensor of draws x rows x `chunk_width`: bounds the memory of filling, scoring
INTERVAL = 0.95  # the central interval `lower` to `upper` that `call` reports
METRICS = ("loss", "reconstruction_loss", "kl_loss", "mse")


_TRACED = weakref.WeakKeyDictionary()


def traced(model: "VariationalAutoencoder", method: str):
    """`model.<method>` as a `tf.function`, made once per model and method: one graph per batch shape, not eager ops
    per call. Python arguments are part of the trace; pass varying numbers (seeds) as tensors."""
    functions = _TRACED.setdefault(model, {})
    if method not in functions:
        # A weak reference: the function must not keep its model alive (it is this dict's key). A partial, not a
        # closure: TensorFlow counts a function's traces by its code, which every model's closure would share, and
        # warns of retracing when many models (the candidates of a model choice) each trace their own graph once.
        functions[method] = tf.function(functools.partial(_call_method, weakref.ref(model), method),
                                        reduce_retracing=True)
    return functions[method]


def _call_method(model_ref, method: str, *args):
    return getattr(model_ref(), method)(*args)


def memory_maps() -> tuple[int, int]:
    """(memory maps this process holds, `vm.max_map_count`): Linux's count and its limit; OSError elsewhere."""
    with open("/proc/sys/vm/max_map_count") as limit, open("/proc/self/maps") as maps:
        return sum(1 for _ in maps), int(limit.read())


def xla_has_room() -> bool:
    """Whether this process may compile one more model with XLA: below half the memory maps Linux allows it.

    XLA never unmaps a model's compiled code (about 240 maps per model fitted, on
    TensorFlow 2.21's CPU), and at `vm.max_map_count` LLVM cannot allocate and the
    process dies: after about 270 models, three model choices in one notebook.
    Past half of it, models train without XLA (slower, no maps) and say so once.
    """
    try:
        held, limit = memory_maps()
    except (OSError, ValueError):
        return True  # not Linux: nothing to count
    room = held < limit // 2
    if not room:
        warn("this process has compiled many models with XLA, whose code is never freed; the next ones train "
             "without it (slower): start a new process to compile again")
    return room


def reparameterize(qz, eps):
    """z = loc + L eps: a draw from q(z|x) that gradients pass through."""
    return qz.loc + tf.linalg.matvec(qz.scale.to_dense(), eps)


class Posterior(NamedTuple):
    """q(z|x), its KL from N(0, I) per example, and log diag(L) [B, K] kept finite."""

    qz: tfd.Distribution
    rate: tf.Tensor
    log_scale: tf.Tensor


class LogWeights(NamedTuple):
    """What one pass of rows `x` [B, D] and noise `eps` [S, B, K] gives, per draw and row.

    `log_px` [S, B]: log p(x|z) in nats of the raw data (of the observed cells,
    for a model that allows missing ones); `log_pz` and `log_qz` [S, B]: log p(z)
    and log q(z|x) at the same z; `rate` [B]: the analytic KL(q(z|x) || p(z));
    `loc` [S, B, D]: the decoder's mean in model units; `z` [S, B, K]: the codes.
    The importance weight of a draw is `log_px + log_pz - log_qz` (`log_weight`).
    Where an observed value lies so far beyond the training rows' that the
    draw's terms overflow, `log_px` is -inf, never NaN: the draw weighs nothing.
    A model whose cells are missing not at random (`tfp_vae.missingness`) also
    draws the missing cells: `log_px` is then log p(x_observed, s | z, x_missing)
    and `completed` [S, B, D] the rows in raw units with those draws in their gaps.
    """

    log_px: tf.Tensor
    log_pz: tf.Tensor
    log_qz: tf.Tensor
    rate: tf.Tensor
    loc: tf.Tensor
    z: tf.Tensor
    completed: tf.Tensor | None = None

    @property
    def log_weight(self) -> tf.Tensor:
        return self.log_px + self.log_pz - self.log_qz

    @property
    def draw_logits(self) -> tf.Tensor:
        """`log_weight`, with equal weights for a row whose every draw weighs nothing, so that its draws still
        mix (into an inf fill, never NaN) and can be resampled."""
        log_weight = self.log_weight
        return tf.where(tf.reduce_all(log_weight == -np.inf, axis=0), 0.0, log_weight)


class VariationalAutoencoder(heads.RebuiltFromConfig, tf_keras.Model):
    """The training loop, metrics and raw-unit outputs shared by tfp_vae's models.

    A subclass defines the posterior, the decoder's parameters, its likelihood and
    the loss; it works in "model units" (standardised for `GaussianVAE`, raw for
    the question's model), and this class maps everything it returns back to raw
    units. Every loss, score and bound is built on one method, `log_weights`.
    """

    # Layers whose weights moved since the first file layout, and where that layout kept them.
    legacy_weight_paths: dict = {}
    # Draws of q(z|x) per row in a training or validation step.
    importance_samples: int = 1
    # Whether rows with gaps are scored through a Cholesky factor each (`GaussianVAE.correlated_gaps`).
    correlated_gaps: bool = False
    # Whether rows may have missing cells (`GaussianVAE(allow_missing=True)`): scored over the observed ones, filled.
    allow_missing: bool = False
    # Columns trained dequantised (`GaussianVAE(integer_columns=...)`): their draws are rounded to whole numbers.
    integer_columns: tuple = ()

    def __init__(self, input_size: int, code_size: int, kl_weight: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        if int(input_size) < 1 or int(code_size) < 1:
            raise ValueError(
                f"input_size and code_size must be positive, got {input_size} and {code_size}")
        if not 0 <= float(kl_weight) < np.inf:
            raise TfpVaeError(f"kl_weight must be finite and not negative (1 gives the ELBO), got {kl_weight}")
        self.input_size = int(input_size)
        self.code_size = int(code_size)
        self.kl_weight = float(kl_weight)
        self.beta = tf.Variable(self.kl_weight, trainable=False, dtype=tf.float32, name="beta")
        self.seed = seed
        self.noise_seed_ = int(np.random.randint(2**31 - 1) if seed is None else seed)
        self.trackers_ = {name: tf_keras.metrics.Mean(name=name) for name in METRICS}

    # What a subclass defines.
    def to_model_units(self, x, observed=None):
        """Rows in model units; given `observed`, the mask of observed cells, a missing one is its feature's centre."""
        return x

    def log_jacobian(self, x, mask=None):
        """log |det du/dx| of rows x (of their observed cells, given `mask`): 0 when the model works in raw units."""
        return tf.constant(0.0)

    def observed(self, x):
        """1 where a cell of `x` is observed, 0 where it is missing (NaN); None for a model that needs complete rows."""
        return tf.cast(tf.math.is_finite(x), x.dtype) if self.allow_missing else None

    @property
    def noise_size(self) -> int:
        """Standard normal numbers per draw and row: the code's, and any the likelihood draws besides."""
        return self.code_size

    def missing_values(self, x, u, mask, loc, scale, noise):
        """`(log p(s|x), completed rows)` for the mask `s`: (0, None) when cells are missing at random."""
        return 0.0, None

    def model_units(self, x):
        """Rows in model units; a missing cell (where the model allows them) as its feature's centre."""
        mask = self.observed(x)
        if mask is None:
            return self.to_model_units(x)
        return self.to_model_units(tf.where(mask > 0, x, 0.0), mask)

    def raw_center(self, loc):
        """The decoder's centre in raw units, which the `mse` metric measures from: its mean or, transformed, median."""
        return loc

    def raw_outputs(self, loc, scale):
        """Each feature's `(mean, stddev, lower, upper)` of p(x|z) in raw units.

        `lower`-`upper` is the central `INTERVAL`.
        """
        half_width = tf.math.ndtri(0.5 + 0.5 * INTERVAL) * scale
        return loc, scale, loc - half_width, loc + half_width

    def raw_distribution(self, loc, scale):
        """p(x|z) over raw rows, from the decoder's parameters in model units."""
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def decoder_log_prob(self, u, loc, scale, training: bool = False, mask=None):
        """log p(u|z) per row in model units (`training`: as a training step scores it; `mask`: observed cells)."""
        return losses.gaussian_log_prob(u, loc, scale, mask)

    def missing_outputs(self, x, mask, loc, scale):
        """`(mean, stddev)` in raw units of each cell of p(x|z) given the row's observed cells `x` (mask 1)."""
        return self.raw_outputs(loc, scale)[:2]

    def missing_draws(self, x, mask, loc, scale, seed):
        """Rows drawn from p(x|z) given their observed cells `x` (mask 1); the observed cells as drawn may differ."""
        return self.raw_distribution(loc, scale).sample(seed=seed)

    def posterior(self, u):
        raise NotImplementedError

    def posterior_mean(self, u):
        """E[z|x], without building the posterior's scale (serving asks for this at every call)."""
        return self.posterior(u).mean()

    def posterior_terms(self, u) -> Posterior:
        qz = self.posterior(u)
        scale_tril = qz.scale.to_dense()
        return Posterior(qz, losses.rate_full(qz.loc, scale_tril), tf.math.log(tf.linalg.diag_part(scale_tril)))

    @property
    def constant_bytes(self) -> int:
        """What its weights take inside an exported graph, which holds them as constants."""
        return sum(variable.shape.num_elements() * variable.dtype.size for variable in self.variables)

    @property
    def chunk_width(self) -> int:
        """Numbers per row and draw in the decoder's scale: what sizes evaluation's chunks."""
        return self.input_size

    def draws_for(self, num_samples: int) -> int:
        """The draws of the code an importance-weighted estimate needs: `num_samples`, or 1 where every draw gives
        the same (`is_closed_form`)."""
        return 1 if self.is_closed_form else num_samples

    @property
    def is_closed_form(self) -> bool:
        """Whether the decoder ignores the code and q(z|x) is the prior (`GaussianVAE.to_gaussian`)."""
        return False

    @property
    def needs_covariance(self) -> bool:
        """Whether `set_statistics` needs the training rows' covariance."""
        return False

    @property
    def needs_rows(self) -> bool:
        """Whether `set_statistics` needs training rows (to fit a transform), besides their moments."""
        return False

    def set_statistics(self, stats: RunningMoments, rows=None, names=None) -> "VariationalAutoencoder":
        """Takes what it needs from the training rows' moments: nothing, unless it normalises."""
        return self

    def decoder_params(self, z):
        """Decoder mean and scale (per-feature sigma, or a lower-triangular S [..., D, D]), in model units."""
        raise NotImplementedError

    def kl_weight_now(self, training: bool):
        """`beta` in a train step (a warm-up anneals it), else `kl_weight`, so validation losses compare."""
        return self.beta if training else self.kl_weight

    def loss_terms(self, x, eps, training: bool = False) -> dict:
        """Per-example `loss`, `reconstruction_loss`, `kl_loss` and `mse` for noise `eps` [S, B, K]."""
        raise NotImplementedError

    # The one seam: every loss, score and bound.
    def weight_terms(self, x, eps):
        """`log_weights`' importance weights, log p(x|z) and log q(z|x) - log p(z) [S, B] alone: what a likelihood
        estimate needs."""
        weights = self.log_weights(x, eps)
        return weights.log_weight, weights.log_px, weights.log_qz - weights.log_pz

    def log_weights(self, x, eps, training: bool = False) -> LogWeights:
        """log p(x|z), log p(z), log q(z|x) for z = loc + L eps, eps [S, B, `noise_size`], with the rate and the
        decoder's mean."""
        mask = self.observed(x)
        u = self.model_units(x)
        if mask is not None:
            x = tf.where(mask > 0, x, 0.0)  # any finite number: a missing cell's terms are masked out
        code_noise = eps[..., :self.code_size]
        qz, rate, log_scale = self.posterior_terms(u)
        z = reparameterize(qz, code_noise)
        loc, scale = self.decoder_params(z)
        log_px = self.decoder_log_prob(u, loc, scale, training, mask) + self.log_jacobian(x, mask)
        completed = None
        if mask is not None:
            log_ps, completed = self.missing_values(x, u, mask, loc, scale, eps[..., self.code_size:])
            log_px += log_ps
        log_px = tf.where(tf.math.is_nan(log_px), -np.inf, log_px)  # inf / inf in a Gaussian's terms
        log_qz = losses.standard_normal_log_prob(code_noise) - tf.reduce_sum(log_scale, axis=-1)
        return LogWeights(log_px, losses.standard_normal_log_prob(z), log_qz, rate, loc, z, completed)

    # Keras.
    def compile(self, optimizer=None, jit_compile=None, steps_per_execution=16, **kwargs):
        """Adam at 1e-3 unless another optimizer is given; the model supplies its own loss.

        The train step is compiled by XLA unless a `tf.distribute` strategy is in
        scope (XLA cannot place a mirrored step's variables) or rows with gaps
        are scored through a Cholesky factor each (`correlated_gaps`: XLA's
        Cholesky and its gradient made such a step with 61 features 3-9x
        slower on CPU, `benchmarks/gaps_speed.py`) or the process has compiled
        too many models already (`xla_has_room`), and 16 steps run per
        call into TensorFlow: on a model this size both matter more than the maths
        (about 1.4x each, `benchmarks/speed.py`). Per-batch callbacks then see every
        16th batch.
        """
        refuse_keras_3([optimizer], "optimizer")
        if jit_compile is None:
            jit_compile = not tf.distribute.has_strategy() and not self.correlated_gaps and xla_has_room()
        super().compile(optimizer=optimizer or tf_keras.optimizers.Adam(1e-3), jit_compile=jit_compile,
                        steps_per_execution=steps_per_execution, **kwargs)

    def compile_from_config(self, config):
        """Recompiles a loaded model, so its optimizer state comes back and training resumes."""
        self.compile(**tf_keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def save(self, filepath, *args, **kwargs):
        """Keras `save`, to a `.keras` file: weights, normalisation and optimizer state.

        For TensorFlow Serving, export with `tfp_vae.export_saved_model` instead.
        """
        if not str(filepath).endswith(".keras"):
            raise ValueError(
                f"save to a path ending in .keras, got {str(filepath)!r}; for a SavedModel that "
                "TensorFlow Serving loads, use tfp_vae.export_saved_model")
        super().save(filepath, *args, **kwargs)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        saving.stamp_layout(store)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        layers = {getattr(self, name): paths for name, paths in self.legacy_weight_paths.items()}
        saving.restore_legacy_layout(store, {layer: paths for layer, paths in layers.items() if layer is not None})

    @property
    def metrics(self):
        return list(self.trackers_.values())

    def draw_noise(self, batch_size, step=None):
        """eps [S, B, K] (S: `importance_samples`), a function of the seed, the step and each row's place in the
        global batch.

        Runs repeat and resume exactly, and a batch split across replicas gets the
        same noise, row for row, as on one device. `step` defaults to the optimizer's.
        """
        step = tf.cast(self.optimizer.iterations if step is None else step, tf.int32)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context else 1
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32) if context else 0
        eps = tf.random.stateless_normal(
            [self.importance_samples, batch_size * replicas, self.noise_size], seed=tf.stack([self.noise_seed_, step]))
        return eps[:, replica * batch_size:(replica + 1) * batch_size]

    def fixed_noise(self, num_samples: int, seed=0):
        """eps [S, 1, K]: the same `num_samples` draws for every row and call with this `seed`, so a row scores and
        fills the same whatever batch it comes in (Python, the command line or the SavedModel)."""
        return tf.random.stateless_normal([num_samples, 1, self.noise_size], seed=[seed, self.noise_seed_])

    def train_step(self, data):
        x = features_of(data)
        eps = self.draw_noise(tf.shape(x)[0])
        with tf.GradientTape() as tape:
            terms = self.loss_terms(x, eps, training=True)
            loss = tf.nn.compute_average_loss(terms["loss"])
        gradients = tape.gradient(loss, self.trainable_variables)
        # Outside tf.distribute there is one replica, nothing to sum; the optimizer's sum would trace a
        # tf.custom_gradient, which TensorFlow keeps in a global registry with the whole train graph: 25 MB a model,
        # never freed (`benchmarks/process_memory.py`).
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables),
                                       experimental_aggregate_gradients=tf.distribute.has_strategy())
        return self.update_metrics(terms)

    def test_step(self, data):
        # Each row's own draws (`importance_samples` of them), the same at every epoch: the validation loss is
        # then an unbiased, repeatable estimate of the expected loss. Draws shared by every row would favour the
        # posteriors that suit those draws, and early stopping would stop on their noise.
        x = features_of(data)
        return self.update_metrics(self.loss_terms(x, self.draw_noise(tf.shape(x)[0], step=-1)))

    def update_metrics(self, terms):
        for name, tracker in self.trackers_.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers_.items()}

    def fit(self, x=None, y=None, **kwargs):
        """Keras `fit` with no targets: `x` is an array [rows, input_size] or a dataset of them."""
        if y is not None:
            raise DataError("a VAE learns from x alone: call fit(x) without y")
        self.check_input(x)
        x = as_rows(x)
        refuse_keras_3(kwargs.get("callbacks"), "callbacks")
        if kwargs.get("steps_per_epoch") is None and any(
                isinstance(data, tf.data.Dataset) and data.cardinality() < 0
                for data in (x, kwargs.get("validation_data"))):
            # Several steps per call need the number of batches; one step per call does not.
            self._steps_per_execution.assign(1)
            self.train_function = self.test_function = None
        return super().fit(x, **kwargs)

    def evaluate(self, x=None, y=None, **kwargs):
        self.check_input(x)
        return super().evaluate(as_rows(x), y, **kwargs)

    def predict(self, x, *args, **kwargs):
        self.check_input(x)
        return super().predict(as_rows(x), *args, **kwargs)

    def check_input(self, x, source: str = "x") -> None:
        """A clear `DataError` for data of the wrong width or rank, with non-finite values, or paired with targets.

        Tensors being traced pass: their signature checks their shape.
        """
        if tf.is_tensor(x) and not tf.executing_eagerly():
            return
        if isinstance(x, tf.data.Dataset):
            if isinstance(x.element_spec, (tuple, list)) and len(x.element_spec) > 1:
                raise DataError(f"{source}: a VAE learns from x alone: give a dataset of rows, not of (x, y) pairs")
            width = tf.TensorShape(features_of(x.element_spec).shape)[-1]
            if width is not None and width != self.input_size:
                raise DataError(
                    f"{source}: expected {self.input_size} features per row, dataset yields {width}")
            return
        check_block(require_2d(np.asarray(x), source), 0, self.input_size, source,
                    getattr(self, "allow_missing", False))

    # Tensors in, tensors out, in raw units.
    def call(self, x):
        """Reconstruction at the posterior mean: `code_mean` [B, K]; `mean`, `stddev`, `lower`, `upper` [B, D].

        `lower` and `upper` bound the central 95% (`INTERVAL`) of each feature of p(x|z) at that code.
        """
        code_mean = self.posterior_mean(self.model_units(tf.convert_to_tensor(x, tf.float32)))
        return reconstruction(code_mean, *self.raw_outputs(*self.decoder_params(code_mean)))

    def folded_call(self, x):
        """`call`'s outputs from a graph with fewer ops once the weights are constants (the export's)."""
        return self(x)

    def encode(self, x):
        """q(z|x), a distribution over codes."""
        self.check_input(x)
        return self.posterior(self.model_units(tf.convert_to_tensor(x, tf.float32)))

    def decode(self, z):
        """p(x|z) in raw units, a distribution over rows of data.

        Under a transform (`transform="log"` or `"yeo_johnson"`) its mean is not the decoder's:
        `decoder_outputs` gives its moments.
        """
        return self.raw_distribution(*self.decoder_params(self.codes(z)))

    def decoder_outputs(self, z):
        """`(mean, stddev, lower, upper)` of each feature of p(x|z) in raw units, for codes `z` [B, K]."""
        return self.raw_outputs(*self.decoder_params(self.codes(z)))

    def codes(self, z):
        """`z` as a float32 tensor [..., K]; a `DataError` for codes of another size."""
        z = tf.convert_to_tensor(z, tf.float32)
        if z.shape.rank is not None and (z.shape.rank < 1 or z.shape[-1] not in (None, self.code_size)):
            raise DataError(f"z: expected codes of size {self.code_size} [..., {self.code_size}], got shape {z.shape}")
        return z

    def score(self, x, num_samples: int = SCORE_SAMPLES) -> dict:
        """Per-example `elbo`, `reconstruction_log_prob` and `kl` in nats of the raw data.

        The expectation over q(z|x) uses the same `num_samples` draws for every row
        and call, so a row's score does not depend on its batch.
        """
        self.check_input(x)
        require_count(num_samples, "num_samples", least=1)
        weights = self.log_weights(tf.convert_to_tensor(x, tf.float32), self.fixed_noise(num_samples))
        reconstruction_log_prob = tf.reduce_mean(weights.log_px, axis=0)
        return {"elbo": losses.elbo(-reconstruction_log_prob, weights.rate),
                "reconstruction_log_prob": reconstruction_log_prob, "kl": weights.rate}

    def elbo(self, x, num_samples: int = SCORE_SAMPLES):
        """The evidence lower bound of each row, in nats of the raw data."""
        return self.score(x, num_samples)["elbo"]

    def score_in_batches(self, x, batch_size: int = SCORE_ROWS, source: str = "x") -> dict:
        """`score` of many rows as numpy arrays, `batch_size` rows at a time through one traced graph (twice as
        fast as eager ops on 100,000 rows, its tracing included; a row scores the same in any batch). `source`
        names the rows in an error."""
        self.check_input(x, source)
        x, score = np.asarray(x, np.float32), traced(self, "score")
        parts = [score(tf.constant(x[start:start + batch_size])) for start in range(0, max(len(x), 1), batch_size)]
        return {name: np.concatenate([part[name].numpy() for part in parts]) for name in parts[0]}

    def impute(self, x, draws: int | None = None, num_samples: int = IMPUTE_SAMPLES, seed: int = 0,
               batch_size: int = IMPUTE_ROWS):
        """Rows `x` [B, D] with their missing (NaN) cells filled from p(x_missing | x_observed).

        Importance-weighted (MIWAE, Mattei and Frellsen 2019): `num_samples` codes
        from q(z|x_observed), weighted by p(x_observed|z) p(z) / q(z|x_observed).
        Returns `(filled, stddev)`: E[x_missing | x_observed] in the gaps and each
        filled cell's predictive standard deviation (observed cells are copied as
        they are, their stddev 0; a fill past float32's range, for observed values
        far beyond the training rows', is inf with an inf stddev, never NaN); with
        `draws`, a third array [draws, B, D] of rows drawn from p(x_missing |
        x_observed) by sampling importance resampling, for multiple imputation.
        Deterministic for a given `seed`: every row is weighted over the same
        `num_samples` draws of the noise (`fixed_noise`), so a row fills the same
        whatever table or batch it comes in, as the SavedModel's `impute` (seed 0)
        fills it; its `draws` resample noise of its own, which depends on its place
        in the table. One draw where all give the same (`is_closed_form`). Rows
        are filled `batch_size` at a time, fewer where their draws would take more than
        `DRAW_NUMBERS` numbers per tensor (`chunk_width`).
        """
        self.check_input(x)
        self.require_fills()
        require_count(num_samples, "num_samples", least=1)
        if draws is not None:
            require_count(draws, "draws", least=0)
        x = np.asarray(x, np.float32)
        if not len(x):
            empty = np.zeros([0, self.input_size], np.float32)
            return (empty, empty) + ((np.zeros([draws, 0, self.input_size], np.float32),) if draws else ())
        num_samples = self.draws_for(num_samples)
        fill_rows = traced(self, "fill_rows")
        rows = self.rows_per_batch(num_samples, batch_size)
        results = []
        for start in range(0, len(x), rows):
            # Every batch is `rows` rows, the last padded with copies of its first, so one graph (traced for one
            # shape) fills all of them and a row's draws are the same whatever the length of its table.
            batch = x[start:start + rows]
            padded = np.concatenate([batch, np.repeat(batch[:1], rows - len(batch), axis=0)])
            parts = fill_rows(tf.constant(padded), tf.constant(seed, tf.int32), tf.constant(seed + start, tf.int32),
                              num_samples, draws or 0)
            results.append([part.numpy()[..., :len(batch), :] for part in parts])
        return tuple(np.concatenate([part[i] for part in results], axis=-2) for i in range(len(results[0])))

    def rows_per_batch(self, num_samples: int, batch_size: int) -> int:
        """Rows whose `num_samples` draws each fit in `DRAW_NUMBERS` numbers (at least 1, at most `batch_size`)."""
        return max(1, min(batch_size, DRAW_NUMBERS // (num_samples * self.chunk_width)))

    def require_fills(self) -> None:
        """A `TfpVaeError` for a model that needs complete rows: it cannot fill gaps."""
        if not self.allow_missing:
            raise TfpVaeError("this model needs complete rows: train it with allow_missing=True to fill gaps")

    def imputation(self, x, num_samples: int = IMPUTE_SAMPLES, seed: int = 0):
        """Tensors in and out: `(filled, stddev)` for rows `x` [B, D] with NaN gaps (see `impute`)."""
        self.require_fills()
        mask = tf.math.is_finite(x)
        weights = self.log_weights(x, self.fixed_noise(self.draws_for(num_samples), seed))
        probability = tf.nn.softmax(weights.draw_logits, axis=0)[..., tf.newaxis]  # [S, B, 1]
        if weights.completed is not None:  # each draw's own values, weighted with the mask they explain
            mean, stddev = weights.completed, tf.zeros_like(weights.completed)
        else:
            mean, stddev = self.missing_outputs(x, tf.cast(mask, x.dtype), *self.decoder_params(weights.z))
        fill, spread = mixture_moments(probability, mean, stddev)
        return tf.where(mask, x, fill), tf.where(mask, 0.0, spread)

    def fill_rows(self, x, seed, batch_seed, num_samples: int, draws: int):
        """Tensors in and out, `impute`'s traced step: `(filled, stddev)` for rows `x` [B, D], and with `draws` > 0
        the rows drawn [draws, B, D]; `seed` (the fills') and `batch_seed` (the draws', one per batch of a table)
        scalar tensors."""
        filled, stddev = self.imputation(x, num_samples, seed)
        if not draws:
            return filled, stddev
        # The draws resample noise of each row's own: two rows resampling the same draw of the fills' shared noise
        # would share its code (and, missing not at random, its drawn cells), and their draws would be correlated.
        noise = tf.random.stateless_normal([num_samples, tf.shape(x)[0], self.noise_size], seed=[batch_seed, 3])
        weights = self.log_weights(x, noise)
        mask = tf.math.is_finite(x)
        chosen = tf.random.stateless_categorical(tf.transpose(weights.draw_logits), draws, seed=[batch_seed, 1])
        if weights.completed is not None:  # the chosen draws' own values
            rows = tf.transpose(tf.gather(tf.transpose(weights.completed, [1, 0, 2]), chosen, batch_dims=1), [1, 0, 2])
        else:
            z = tf.gather(tf.transpose(weights.z, [1, 0, 2]), chosen, batch_dims=1)  # [B, draws, K]
            rows = self.missing_draws(x, tf.cast(mask, x.dtype), *self.decoder_params(tf.transpose(z, [1, 0, 2])),
                                      seed=[batch_seed, 2])
        return filled, stddev, tf.where(mask, x, self.round_integer_columns(rows))

    def sample(self, num_samples: int, seed=None):
        """`num_samples` rows drawn from the model, in raw units (`integer_columns` in whole numbers)."""
        require_count(num_samples, "num_samples", least=0)
        seed = tf.stack([tf.cast(self.noise_seed_ if seed is None else seed, tf.int32), 1])
        z = tf.random.stateless_normal([num_samples, self.code_size], seed=seed)
        return self.round_integer_columns(self.raw_distribution(*self.decoder_params(z)).sample(seed=seed + [0, 1]))

    def round_integer_columns(self, rows):
        """Rows drawn [..., D] with `integer_columns` rounded: a dequantised value's draw, rounded, is a draw of
        its integer (the density over [k - 0.5, k + 0.5) is the probability of k)."""
        if not self.integer_columns:
            return rows
        rounded = tf.round(rows)
        rounded = tf.where(rounded == 0.0, 0.0, rounded)  # -0.0 would be written "-0"
        return tf.where(np.isin(np.arange(self.input_size), self.integer_columns), rounded, rows)


def named_columns(columns, names=None) -> str:
    """Columns for a message: their indices, each with its name where the data names it (`3 'dose'`)."""
    return ", ".join(f"{column} {names[column]!r}" if names is not None and names[column] != str(column)
                     else str(column) for column in columns)


@serializable
class GaussianVAE(VariationalAutoencoder):
    """A VAE whose decoder is a Gaussian with learned mean and scale.

    Args:
      input_size: D, the number of features.
      code_size: K, the size of the latent code.
      hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        `()` gives a linear VAE (probabilistic PCA when `decoder_scale="shared"`).
      posterior: `"full"` (MultivariateNormalTriL) or `"diagonal"`.
      decoder_scale: the decoder's likelihood (`tfp_vae.likelihoods`):
        `"learned"` sigma(z), `"shared"` per feature, `"optimal"` (sigma-VAE),
        `"fixed"` at `fixed_scale`, or `"full"`: a full covariance S(z) S(z)^T
        from the network, for features whose residuals are correlated in ways
        that depend on z, such as columns derived from others; it costs
        D (D + 1) / 2 outputs and a triangular solve per example.
      kl_weight: beta, the weight of the KL term; 1 gives the ELBO. The current
        value lives in `model.beta`, a variable a callback can anneal.
      fixed_scale: the decoder sigma for `decoder_scale="fixed"`, in standard
        deviations of each feature.
      min_scale: the floor of the decoder sigma, in standard deviations.
      activation: the hidden layers' activation.
      normalization: `"standardize"` each feature, or `"whiten"` (standardise,
        then decorrelate; `tfp_vae.normalization.Whiten`): the decoder's noise,
        independent in model units, is then correlated in raw units, which suits
        strongly correlated features (breast cancer's radius, perimeter and area).
      seed: fixes the initial weights and the noise of every step.
      transform: `"none"`; `"log"`: the logarithm of each feature whose training
        values are all positive, whose fills, draws and intervals then stay
        positive; or `"yeo_johnson"`: a learned Yeo-Johnson power transform of
        each feature, for skewed columns. Either comes before the normalisation
        (`tfp_vae.transforms`), and the likelihood stays a density of the raw
        numbers through its log-Jacobian.
      nll_beta: > 0 trains a learned sigma(z) by beta-NLL
        (`tfp_vae.losses.beta_nll_log_prob`); scores stay the log-likelihood.
      allow_missing: NaN cells are missing values (MIWAE, Mattei and Frellsen
        2019): the likelihood is over each row's observed cells, the encoder sees
        a missing cell as its feature's centre, and `impute` fills the gaps.
        Whitened, or with `decoder_scale="full"`, a row is scored by the Gaussian
        marginal of its observed cells and filled from the conditional of its
        missing ones (`tfp_vae.gaps`), and whitening's covariance is fitted by EM.
      missing_mechanism: `"at-random"`, or `"self-masking"`: cells missing
        because of their value (not-MIWAE; `tfp_vae.missingness`), with
        `"self-masking-high"` or `"-low"` where it is known that larger (or
        smaller) values are the ones more often missing.
      importance_samples: S, draws of q(z|x) per row in each training step. 1
        trains on the ELBO; S > 1 on the importance-weighted bound
        log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x) (IWAE; with gaps, MIWAE's
        objective), tighter, at S times a step's decoder cost. A KL warm-up's
        weight then scales log p(z_s) - log q(z_s|x) inside each weight.
      em_prior_rows: with gaps, the weight in rows of the independent
        Gaussian's prior under which EM fits whitening's covariance
        (`tfp_vae.gaps.em_gaussian`); 0 is the maximum-likelihood fit.
      integer_columns: indices of the columns whose values are integers and
        which training reads dequantised, U(-0.5, 0.5) noise added to each cell
        (`tfp_vae.train` does; `fit` takes rows as given): the model's draws
        (`sample`, `impute(x, draws=N)`) round them back to whole numbers.

    #### Example

    ```python
    model = GaussianVAE(input_size=13, code_size=2)
    model.compile()
    model.fit(x_train, epochs=50, batch_size=64)   # raw units: no scaling needed
    model.predict(x_test)["stddev"]                # per-feature sigma, raw units
    model.elbo(x_test)                             # nats of the raw data
    ```
    """

    # tfp_vae 0.1.0 kept the normaliser at `standardize` and the likelihood's weights in `DecoderScale`.
    legacy_weight_paths = {
        "normalizer": ["standardize"],
        "likelihood": ["layers/decoder_scale"],
        "likelihood_dense": ["layers/decoder_scale/dense"],
    }

    def __init__(self, input_size: int, code_size: int = 2, hidden=(64, 64), posterior: str = "full",
                 decoder_scale: str = "learned", kl_weight: float = 1.0, fixed_scale: float = 1.0,
                 min_scale: float = 1e-3, activation: str = "leaky_relu", normalization: str = "standardize",
                 seed=None, transform: str = "none", nll_beta: float = 0.0, allow_missing: bool = False,
                 missing_mechanism: str = "at-random", importance_samples: int = 1,
                 em_prior_rows: float = FIXED_DEFAULTS["em_prior_rows"], integer_columns=(), **kwargs):
        super().__init__(input_size, code_size, kl_weight, seed, **kwargs)
        require_count(importance_samples, "importance_samples", least=1)
        if not 0 < float(min_scale) < 1:
            raise TfpVaeError(f"min_scale must be in (0, 1) standard deviations, got {min_scale}")
        conflict = incompatibility(normalization, decoder_scale, transform, nll_beta, allow_missing, missing_mechanism,
                                   importance_samples)
        if conflict:
            raise TfpVaeError(conflict)
        if missing_mechanism not in MECHANISMS:
            raise TfpVaeError(f"missing_mechanism must be one of {tuple(MECHANISMS)}, got {missing_mechanism!r}")
        if posterior not in heads.POSTERIOR_HEADS:
            raise ValueError(f"posterior must be one of {tuple(heads.POSTERIOR_HEADS)}, got {posterior!r}")
        if normalization not in NORMALIZERS:
            raise ValueError(f"normalization must be one of {tuple(NORMALIZERS)}, got {normalization!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {tuple(TRANSFORMS)}, got {transform!r}")
        self.hidden = tuple(int(width) for width in hidden)
        self.posterior_kind = posterior
        self.decoder_scale = decoder_scale
        self.fixed_scale = float(fixed_scale)
        self.min_scale = float(min_scale)
        self.activation = activation
        self.normalization = normalization
        self.transform = transform
        self.nll_beta = float(nll_beta)
        self.allow_missing = bool(allow_missing)
        self.missing_mechanism = missing_mechanism
        self.importance_samples = int(importance_samples)
        self.em_prior_rows = float(em_prior_rows)
        self.integer_columns = column_indices(integer_columns, self.input_size)

        self.marginals = TRANSFORMS[transform](self.input_size, name="marginals")
        self.missingness = MECHANISMS[missing_mechanism](self.input_size, name="missingness")
        self.normalizer = NORMALIZERS[normalization](self.input_size, name="normalizer")
        head = heads.POSTERIOR_HEADS[posterior]
        self.encoder_mlp = heads.MLP(self.hidden, activation, seed, name="encoder_mlp")
        self.encoder_params = tf_keras.layers.Dense(
            head.params_size(self.code_size), name="encoder_params",
            kernel_initializer=heads.seeded_initializer(seed, 100))
        self.posterior_head = head(self.code_size, name="posterior")
        self.decoder_mlp = heads.MLP(self.hidden[::-1], activation, _offset(seed, 200), name="decoder_mlp")
        self.decoder_loc = tf_keras.layers.Dense(
            self.input_size, name="decoder_loc", kernel_initializer=heads.seeded_initializer(seed, 300))
        self.likelihood = make_likelihood(decoder_scale, self.input_size, self.min_scale, _offset(seed, 400),
                                          self.fixed_scale, name="likelihood")
        self(tf.zeros([1, self.input_size]))

    def get_config(self):
        return {"input_size": self.input_size, "code_size": self.code_size, "hidden": list(self.hidden),
                "posterior": self.posterior_kind, "decoder_scale": self.decoder_scale,
                "kl_weight": self.kl_weight, "fixed_scale": self.fixed_scale,
                "min_scale": self.min_scale, "activation": self.activation,
                "normalization": self.normalization, "seed": self.seed, "transform": self.transform,
                "nll_beta": self.nll_beta, "allow_missing": self.allow_missing,
                "missing_mechanism": self.missing_mechanism, "importance_samples": self.importance_samples,
                "em_prior_rows": self.em_prior_rows, "integer_columns": list(self.integer_columns), "name": self.name}

    @property
    def likelihood_dense(self):
        """The likelihood's dense layer, where it has one (for reading older files)."""
        return getattr(self.likelihood, "dense", None)

    # Normalisation.
    @property
    def is_adapted(self) -> bool:
        return self.normalizer.is_adapted

    @property
    def needs_covariance(self) -> bool:
        return self.normalizer.needs_covariance

    @property
    def needs_rows(self) -> bool:
        # With gaps, whitening's covariance is fitted by EM on the rows themselves.
        return self.marginals.needs_rows or self.correlated_gaps

    @property
    def correlated_gaps(self) -> bool:
        """Whether rows with gaps are scored by the Gaussian marginal of their observed cells (`tfp_vae.gaps`)."""
        return self.allow_missing and (self.normalization == "whiten" or self.decoder_scale == "full")

    def adapt(self, data) -> "GaussianVAE":
        """Fits the normalisation (and transform) to `data` (array or dataset) in one streaming pass."""
        stats = moments(data, self.input_size, source="x", covariance=self.needs_covariance and not self.allow_missing,
                        allow_missing=self.allow_missing)
        integers = stats.integer_columns()
        if integers.size:
            warn(f"column(s) {named_columns(integers)} hold only integers: a density can pile peaks onto them, and its "
                 "likelihood then grows without bound; add U(-0.5, 0.5) noise to them first, and name them in "
                 "integer_columns to round their draws (tfp_vae.train does both)")
        return self.set_statistics(stats, first_rows(data, FIT_ROWS, "x") if self.needs_rows else None)

    def set_statistics(self, stats: RunningMoments, rows=None, names=None) -> "GaussianVAE":
        """Sets the normalisation from moments (with their covariance to whiten), warning about constant columns.

        A transform is fitted on the moments and on `rows`, training rows
        (up to `FIT_ROWS` of them), and the normaliser then takes its moments from
        the transformed rows. `names`, the columns' names, are for messages.
        """
        if stats.observed is not None and (stats.observed < 2).all():
            raise DataError(f"{int(stats.observed.max())} row(s) with a value in each column is too few to fit; a "
                            "feature needs at least 2")
        if stats.observed is not None and (stats.observed < 2).any():
            column = int(np.argmax(stats.observed < 2))
            raise DataError(f"column {named_columns([column], names)} has {int(stats.observed[column])} observed "
                            "value(s) in the training rows; a feature needs at least 2")
        constant, tiny = constant_columns(stats.mean, stats.stddev), tiny_columns(stats.mean, stats.stddev)
        if constant.size:
            warn(f"constant column(s) {named_columns(constant, names)} (to float32's precision at their values): their "
                 "scale is floored")
        if tiny.size:
            warn(f"column(s) {named_columns(tiny, names)} vary by less than float32's smallest normal number "
                 "(1.2e-38): multiply them by a large power of ten first")
        floor = None
        if self.needs_rows:
            if rows is None:
                raise TfpVaeError("the transform and, with gaps, whitening are fitted on training rows: pass "
                                  "rows=[N, D]")
            if self.marginals.needs_rows:
                self.marginals.fit(stats, rows)
            # float32's resolution of the raw values, carried through the transform: a constant column's density
            # is then the same transformed or not (a transformed constant is 0, whose own resolution is 1e-38).
            floor = self.marginals.transformed_scale(scale_floor(stats.mean), stats.mean)
            rows = self.marginals(np.asarray(rows, np.float32)).numpy()
            if self.allow_missing and self.needs_covariance:
                mean, covariance = gaps.em_gaussian(rows, self.em_prior_rows)
                # EM's ridge leaves a constant column a variance of its own, far above its value's resolution:
                # without it the column is floored as complete rows' is, and every candidate scores it alike.
                covariance[constant, :], covariance[:, constant] = 0.0, 0.0
                self.normalizer.set_moments(mean, np.sqrt(np.diag(covariance)), len(rows), covariance, floor, constant)
                return self
            stats = moments(rows, covariance=self.needs_covariance, allow_missing=self.allow_missing)
        self.normalizer.set_moments(stats.mean, stats.stddev, stats.count, stats.covariance, floor, constant)
        return self

    def to_gaussian(self) -> "GaussianVAE":
        """Sets a linear model with a shared scale to the Gaussian its normalisation fitted, exactly.

        The decoder then ignores the code (its weights 0, sigma 1 in model units;
        a constant feature's the floor, `min_scale`, where a trained sigma goes too)
        and q(z|x) is the prior, so p(x) is N(0, I) in model units: whitened, the
        full-covariance Gaussian of the (transformed) training rows, by EM where
        they have gaps; standardised, the independent one. Its log-likelihood
        and fills are that Gaussian's in closed form, whatever the draws.
        """
        if self.hidden or self.decoder_scale != "shared" or self.missing_mechanism != "at-random":
            raise TfpVaeError("only a linear model (hidden=()) with decoder_scale='shared' and cells missing at "
                              "random is a Gaussian when untrained")
        for layer in (self.encoder_params, self.decoder_loc):
            layer.kernel.assign(tf.zeros_like(layer.kernel))
        self.encoder_params.bias.assign(self.posterior_head.prior_params(self.code_size))
        self.decoder_loc.bias.assign(tf.zeros_like(self.decoder_loc.bias))
        sigma = np.where(self.normalizer.constant_, self.min_scale, 1.0)
        self.likelihood.raw_scale.assign(raw_from_scale(sigma.astype(np.float32), self.min_scale))
        return self

    @property
    def is_closed_form(self) -> bool:
        if self.hidden or self.decoder_scale != "shared" or self.missing_mechanism != "at-random":
            return False
        with tf.init_scope():  # the weights' values, also while a function that uses them is traced
            return not (np.any(self.encoder_params.kernel.numpy()) or np.any(self.decoder_loc.kernel.numpy())) \
                and np.array_equal(self.encoder_params.bias.numpy(), self.posterior_head.prior_params(self.code_size))

    def fit(self, x=None, y=None, **kwargs):
        """Adapts the normalisation to `x`'s training rows on the first call, then trains.

        With `validation_split`, Keras holds out the last rows of `x`: the statistics
        come from the others.
        """
        if not self.is_adapted:
            held_out = kwargs.get("validation_split") or 0.0
            if held_out and not isinstance(x, tf.data.Dataset):
                x_train = np.asarray(x)[:int(len(x) * (1.0 - held_out))]
                self.adapt(x_train)
            else:
                self.adapt(x)
        return super().fit(x, y, **kwargs)

    # The maths.
    @property
    def chunk_width(self) -> int:
        if self.correlated_gaps:  # each row with gaps takes its own factor of its observed cells' covariance
            return self.input_size**2
        return self.likelihood.chunk_width(self.input_size)

    def to_model_units(self, x, observed=None):
        return self.normalizer(self.marginals(x), observed)

    def log_jacobian(self, x, mask=None):
        return self.marginals.log_jacobian(x, mask) - self.normalizer.log_det_jacobian(mask)

    def raw_center(self, loc):
        return self.marginals.inverse(self.normalizer.inverse(loc))

    def raw_outputs(self, loc, scale):
        return self.transformed_outputs(self.normalizer.inverse(loc), scale)

    def transformed_outputs(self, transformed_mean, scale):
        """`raw_outputs` from the decoder's mean in transformed units (before the normaliser) and its scale."""
        return self.marginals.raw_outputs(transformed_mean, self.likelihood.raw_stddev(self.normalizer, scale),
                                          self.likelihood.half_width(self.normalizer, scale, INTERVAL))

    def raw_distribution(self, loc, scale):
        return self.marginals.raw_distribution(self.likelihood.raw_distribution(self.normalizer, loc, scale))

    def decoder_log_prob(self, u, loc, scale, training: bool = False, mask=None):
        if training:
            scale = self.likelihood.training_scale(u, loc, scale, mask)
            if self.nll_beta:
                return losses.beta_nll_log_prob(u, loc, scale, self.nll_beta, mask)
        if mask is not None and self.correlated_gaps:
            return gaps.observed_log_prob(self.normalizer.standardized(u - loc), self.standardized_factor(scale), mask)
        return self.likelihood.log_prob(u, loc, scale, mask)

    @property
    def noise_size(self) -> int:
        return self.code_size + (self.input_size if self.missingness.draws_missing_values else 0)

    def missing_values(self, x, u, mask, loc, scale, noise):
        if not self.missingness.draws_missing_values:
            return super().missing_values(x, u, mask, loc, scale, noise)
        drawn = loc + scale * noise  # a per-feature Gaussian in standardised units, as self-masking requires
        completed = tf.where(mask > 0, u, drawn)
        return self.missingness.log_prob(completed, mask), tf.where(mask > 0, x, self.raw_center(drawn))

    def standardized_factor(self, scale):
        """F [..., D, D] with F F^T the decoder's noise covariance in standardised units (each feature's spread)."""
        return self.normalizer.standardized_factor(self.likelihood.noise_factor(scale))

    def missing_outputs(self, x, mask, loc, scale):
        if not self.correlated_gaps:
            return super().missing_outputs(x, mask, loc, scale)
        loc, residual = self.standardized_residual(x, mask, loc)
        fill, variance = gaps.conditional(residual, self.standardized_factor(scale), mask)
        stddev = tf.sqrt(variance) * self.normalizer.scale
        return self.marginals.raw_outputs(self.normalizer.unstandardize(loc + fill), stddev,
                                          tf.math.ndtri(0.5 + 0.5 * INTERVAL) * stddev)[:2]

    def missing_draws(self, x, mask, loc, scale, seed):
        if not self.correlated_gaps:
            return super().missing_draws(x, mask, loc, scale, seed)
        loc, residual = self.standardized_residual(x, mask, loc)
        draw = gaps.conditional_draw(residual, self.standardized_factor(scale), mask, seed)
        return self.marginals.inverse(self.normalizer.unstandardize(loc + draw))

    def standardized_residual(self, x, mask, loc):
        """The decoder's mean `loc` in standardised units (after the transform, before any decorrelation), and
        each row's residual from it there (any number where missing)."""
        loc = self.normalizer.standardized(loc)
        rows = tf.where(mask > 0, self.normalizer.standardize(self.marginals(tf.where(mask > 0, x, 0.0))), 0.0)
        return loc, rows - loc

    def posterior(self, u):
        return self.posterior_head(self.encoder_params(self.encoder_mlp(u)))

    def posterior_mean(self, u):
        # Both posterior heads put the mean first in their parameters.
        return self.encoder_params(self.encoder_mlp(u))[..., :self.code_size]

    def folded_call(self, x):
        """`call`'s outputs, its raw-unit mean folded into the decoder's mean layer.

        With the weights frozen into constants, as the export does, the folded
        weights are computed once at load: a call skips the mean's unscaling, the
        encoder's columns of the posterior's scale, and the decoder head's
        concatenation and slicing. On variables it would refold at every call.
        """
        params = self.encoder_params  # only the posterior mean's columns, which both heads put first
        code_mean = dense(self.encoder_mlp(self.model_units(tf.convert_to_tensor(x, tf.float32))),
                          params.kernel[:, :self.code_size], params.bias[:self.code_size])
        hidden = self.decoder_mlp(code_mean)
        scale = self.likelihood.scale(self.likelihood(hidden))
        transformed_mean = dense(hidden, *self.normalizer.fold_output(self.decoder_loc.kernel, self.decoder_loc.bias))
        return reconstruction(code_mean, *self.transformed_outputs(transformed_mean, scale))

    def decoder_params(self, z):
        hidden = self.decoder_mlp(z)
        return self.likelihood.parameters(self.decoder_loc(hidden), self.likelihood(hidden))

    def loss_terms(self, x, eps, training: bool = False) -> dict:
        weights = self.log_weights(x, eps, training)
        distortion = -tf.reduce_mean(weights.log_px, axis=0)
        beta = self.kl_weight_now(training)
        if self.importance_samples > 1:
            loss = -losses.iwae_bound(weights.log_px + beta * (weights.log_pz - weights.log_qz))
        else:
            loss = losses.beta_loss(distortion, weights.rate, beta)
        mask = self.observed(x)
        squared_error = tf.square(x - self.raw_center(weights.loc))
        if mask is None:
            mse = tf.reduce_mean(squared_error, axis=[0, -1])
        else:  # over the observed cells
            mse = tf.reduce_mean(observed_mean(tf.where(mask > 0, squared_error, 0.0), mask), axis=0)
        return {"loss": loss, "reconstruction_loss": distortion, "kl_loss": weights.rate, "mse": mse}


def refuse_keras_3(objects, argument: str) -> None:
    """A clear error for Keras 3 objects (`import keras`), which tfp.layers' Keras 2 (tf_keras) cannot run."""
    for item in objects or []:
        module = type(item).__module__
        if module.split(".")[0] == "keras":
            raise TfpVaeError(f"{argument}: {module}.{type(item).__name__} is a Keras 3 object; tfp_vae runs on "
                              f"Keras 2, which tfp.layers needs: take it from tf_keras "
                              f"(tf_keras.{'callbacks' if argument == 'callbacks' else 'optimizers'}."
                              f"{type(item).__name__})")


def require_count(value, name: str, least: int) -> None:
    """A `TfpVaeError` unless `value` is a whole number of at least `least` (a count of draws, rows or samples).

    A tensor passes: a served signature's graph answers for its own inputs.
    """
    if tf.is_tensor(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise TfpVaeError(f"{name} must be a whole number of at least {least}, got {value!r}")


def as_rows(x):
    """Arrays and nested lists as float32 rows, datasets as they are.

    Keras would feed integers to the float32 graph.
    """
    if x is None or isinstance(x, tf.data.Dataset):
        return x
    if tf.is_tensor(x):
        return tf.cast(x, tf.float32)
    return np.asarray(x, np.float32)


def mixture_moments(weights, means, stddevs):
    """The mean and standard deviation of the mixture sum_i w_i N(means_i, stddevs_i^2), over axis 0.

    A component of weight 0 counts for nothing, even where its moments passed
    float32's range (inf); where the mixture's mean did, it is inf with an inf
    standard deviation, never NaN. Components that agree give exactly their
    value (a constant column fills with its constant): the mean is taken about
    the heaviest component's, where a float32 sum of weights times values is
    off by the weights' rounding (1,000 weights times 5 gave 4.999997).
    """
    heaviest = tf.one_hot(tf.argmax(weights, axis=0), tf.shape(weights)[0], axis=0, dtype=means.dtype)
    reference = tf.reduce_sum(tf.math.multiply_no_nan(means, heaviest), axis=0)
    reference = tf.where(tf.math.is_finite(reference), reference, 0.0)
    mean = reference + tf.reduce_sum(tf.math.multiply_no_nan(means - reference, weights), axis=0)
    second = tf.reduce_sum(tf.math.multiply_no_nan(tf.square(stddevs) + tf.square(means - mean), weights), axis=0)
    return mean, tf.where(tf.math.is_finite(mean), tf.sqrt(second), np.inf)


def reconstruction(code_mean, mean, stddev, lower, upper) -> dict:
    """`call`'s outputs: the code, and each feature's mean, standard deviation and central interval."""
    return {"code_mean": code_mean, "mean": mean, "stddev": stddev, "lower": lower, "upper": upper}


def observed_mean(values, mask):
    """The mean over the last axis of the observed cells (`mask` 1) of each row; 0 for a row with none."""
    return losses.observed_sum(values, mask) / tf.maximum(tf.reduce_sum(mask, axis=-1), 1.0)


def dense(x, kernel, bias):
    """`x @ kernel + bias` as Keras's `Dense` computes it: BiasAdd, which grappler fuses into the MatMul."""
    return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def _offset(seed, offset: int):
    return None if seed is None else seed + offset
