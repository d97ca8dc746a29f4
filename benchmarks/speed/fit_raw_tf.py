"""The same model hand-written in TensorFlow: `python fit_raw_tf.py plain|xla` prints examples per second."""

import sys
import time

import numpy as np
import tensorflow as tf

from common import BATCH, D, EPOCHS, HIDDEN, K, ROWS, report, throughput, training_rows

jit = sys.argv[1] == "xla"
rng = np.random.default_rng(0)
x = training_rows()
tf.random.set_seed(0)
mean, scale = x.mean(0), x.std(0)


def dense(n_in, n_out):
    limit = np.sqrt(6 / (n_in + n_out))
    return [tf.Variable(rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)),
            tf.Variable(np.zeros(n_out, np.float32))]


tril_size = K * (K + 1) // 2
layers = [dense(D, HIDDEN), dense(HIDDEN, HIDDEN), dense(HIDDEN, K + tril_size),
          dense(K, HIDDEN), dense(HIDDEN, HIDDEN), dense(HIDDEN, 2 * D)]
variables = [v for layer in layers for v in layer]
rows, cols = np.tril_indices(K)
scatter = np.zeros((K, K), np.int64)
scatter[rows, cols] = np.arange(tril_size) + 1
is_diag = tf.constant(np.eye(K, dtype=bool))
optimizer = tf.optimizers.Adam(1e-3)


def mlp(h, first, last):
    for w, b in layers[first:last - 1]:
        h = tf.nn.leaky_relu(h @ w + b)
    w, b = layers[last - 1]
    return h @ w + b


data = tf.constant(x)


@tf.function(jit_compile=jit)
def step(batch_rows):
    batch = tf.gather(data, batch_rows)
    eps = tf.random.normal([BATCH, K])
    u = (batch - mean) / scale
    with tf.GradientTape() as tape:
        params = mlp(u, 0, 3)
        loc = params[:, :K]
        flat = tf.pad(params[:, K:], [[0, 0], [1, 0]])
        tril = tf.gather(flat, scatter, axis=1)
        tril = tf.where(is_diag, tf.nn.softplus(tril) + 1e-5, tril)
        z = loc + tf.linalg.matvec(tril, eps)
        out = mlp(z, 3, 6)
        mu, sigma = out[:, :D], 1e-3 + tf.nn.softplus(out[:, D:])
        distortion = tf.reduce_sum(
            0.5 * np.log(2 * np.pi) + tf.math.log(sigma) + 0.5 * tf.square((u - mu) / sigma), 1)
        diag = tf.linalg.diag_part(tril)
        rate = 0.5 * (tf.reduce_sum(tf.square(tril), [1, 2]) + tf.reduce_sum(tf.square(loc), 1) - K
                      - 2 * tf.reduce_sum(tf.math.log(diag), 1))
        loss = tf.reduce_mean(distortion + rate)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss


times = []
for epoch in range(EPOCHS + 1):
    order = tf.reshape(tf.random.shuffle(tf.range(ROWS))[:ROWS // BATCH * BATCH], [-1, BATCH])
    start = time.perf_counter()
    for batch_rows in order:
        loss = step(batch_rows)
    float(loss)
    times.append(time.perf_counter() - start)
report(throughput(times[1:]))
