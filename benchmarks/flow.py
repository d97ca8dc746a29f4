"""The density model a user might pick instead of a VAE: a masked autoregressive flow (TFP), sized on validation rows.

`flow_log_density(x_train, x_test, seed)` standardises with the training rows'
statistics, holds out `VALIDATION_FRACTION` of the training rows, fits each size
in `SIZES` (layers, hidden width) with early stopping on the held-out rows, keeps
the size with the best held-out likelihood, and scores the test rows in nats of
the raw data. Test rows reach nothing but that last step.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae._keras import tf_keras

tfb, tfd = tfp.bijectors, tfp.distributions

SIZES = ((2, 32), (4, 64))
VALIDATION_FRACTION = 0.2
MAX_STEPS, CHECK_EVERY, PATIENCE_STEPS = 5000, 50, 500
BATCH_SIZE, LEARNING_RATE = 64, 1e-3
LOG_SCALE_BOUND = 3.0  # tanh-bounded log scales keep a flow's first steps finite


def masked_autoregressive_flow(input_size: int, layers: int, width: int, seed: int):
    """N(0, I) through `layers` MAF layers of two hidden layers each, the feature order reversed between them.

    Returns the distribution and its networks: the networks sit in closures, where
    `tf.Module` cannot find their variables.
    """
    bijectors, networks = [], []
    for layer in range(layers):
        made = tfb.AutoregressiveNetwork(params=2, hidden_units=[width, width], activation="relu",
                                         kernel_initializer=tf_keras.initializers.GlorotUniform(seed + layer))

        def shift_and_log_scale(x, made=made):
            shift, log_scale = tf.unstack(made(x), axis=-1)
            return shift, LOG_SCALE_BOUND * tf.tanh(log_scale / LOG_SCALE_BOUND)

        bijectors += [tfb.MaskedAutoregressiveFlow(shift_and_log_scale), tfb.Permute(list(range(input_size))[::-1])]
        networks.append(made)
    base = tfd.MultivariateNormalDiag(tf.zeros(input_size, tf.float32))
    return tfd.TransformedDistribution(base, tfb.Chain(bijectors[:-1])), networks


def fit_flow(flow: tfd.Distribution, networks, fit_rows: np.ndarray, validation_rows: np.ndarray, seed: int) -> float:
    """Adam on `fit_rows` with early stopping on `validation_rows`; keeps the best weights, returns their log-likelihood."""
    flow.log_prob(fit_rows[:1])  # builds the networks' variables
    variables = [variable for network in networks for variable in network.trainable_variables]
    assert variables, "the flow has weights to train"
    optimizer = tf_keras.optimizers.Adam(LEARNING_RATE)
    validation = tf.constant(validation_rows)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(flow.log_prob(batch))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def validation_log_likelihood():
        return tf.reduce_mean(flow.log_prob(validation))

    rng = np.random.default_rng(seed)
    best, best_values, since_best = -np.inf, [v.numpy() for v in variables], 0
    for number in range(1, MAX_STEPS + 1):
        step(tf.constant(fit_rows[rng.integers(0, len(fit_rows), BATCH_SIZE)]))
        if number % CHECK_EVERY:
            continue
        score = float(validation_log_likelihood())
        if np.isfinite(score) and score > best:
            best, best_values, since_best = score, [v.numpy() for v in variables], 0
        else:
            since_best += CHECK_EVERY
            if since_best >= PATIENCE_STEPS:
                break
    for variable, value in zip(variables, best_values):
        variable.assign(value)
    return best


def flow_log_density(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    """log p(x_test) per row under the best-sized flow, chosen and fitted on training rows only."""
    mean, scale = x_train.mean(axis=0), np.maximum(x_train.std(axis=0), 1e-12)
    u = ((x_train - mean) / scale).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(u))
    held_out = int(len(u) * VALIDATION_FRACTION)
    validation_rows, fit_rows = u[order[:held_out]], u[order[held_out:]]
    tf.random.set_seed(seed)
    fitted = []
    for layers, width in SIZES:
        flow, networks = masked_autoregressive_flow(u.shape[1], layers, width, seed)
        fitted.append((fit_flow(flow, networks, fit_rows, validation_rows, seed), flow))
    _, best = max(fitted, key=lambda pair: pair[0])
    u_test = ((x_test - mean) / scale).astype(np.float32)
    return best.log_prob(u_test).numpy().astype(np.float64) - np.log(scale).sum()
