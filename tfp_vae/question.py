r"""The question's model, ported line for line from TF1 to TensorFlow Probability.

The question built, in TF1:

    # encoder
    h = tf.layers.dense(x, input_size, activation=tf.nn.leaky_relu)
    params = tf.layers.dense(h, 2 * code_size)
    posterior = tf.contrib.distributions.MultivariateNormalDiagWithSoftplusScale(
        params[:, :code_size], params[:, code_size:])
    code = posterior.mean()
    # decoder
    h = tf.layers.dense(posterior.sample(), input_size, activation=tf.nn.leaky_relu)
    reconstruction = tf.layers.dense(h, input_size)
    # loss
    prior = tf.contrib.distributions.MultivariateNormalDiag(tf.zeros(code_size), tf.ones(code_size))
    loss = tf.reduce_mean((x - reconstruction) ** 2, axis=1) + 1e-4 * tf.contrib.distributions.kl_divergence(posterior, prior)

and asked how to weigh the two terms. Here the same lines are

    posterior = tfd.MultivariateNormalDiag(loc, scale_diag=tf.math.softplus(raw))
    z = loc + softplus(raw) * eps                    (posterior.sample(), reparameterised)
    loss = losses.question_loss(x, reconstruction, KL, kl_weight)

with no input normalisation: it is the baseline exactly as asked. The one
change is numerical: the KL takes log softplus(raw) directly, so a posterior
scale that underflows to zero in float32 (raw parameters below about -100, which
raw data in the thousands gives at the first step) costs a large finite KL
instead of the infinite one, and NaN gradients, that TF1 gave. Its loss is a
Gaussian negative ELBO in disguise, scaled by `2 sigma^2 / D`, with one fixed
decoder sigma `losses.implied_sigma(kl_weight, D)`; that sigma is what it reports
as `stddev` and what its log-likelihoods use.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_vae import heads, losses
from tfp_vae._keras import serializable, tf_keras
from tfp_vae.model import Posterior, VariationalAutoencoder

tfd = tfp.distributions


@serializable
class QuestionVAE(VariationalAutoencoder):
    """The question's VAE: one `leaky_relu` layer of width D each side, MSE + kl_weight * KL.

    Metrics: `loss` (the question's loss), `reconstruction_loss` (its MSE term,
    averaged over features), `kl_loss` and `mse` (both as for `GaussianVAE`).

    #### Example

    ```python
    model = QuestionVAE(input_size=13, code_size=2)        # kl_weight=1e-4, as asked
    model.compile()
    model.fit(x_train, epochs=50, batch_size=64)
    model.implied_sigma                                    # the sigma 1e-4 stands for
    fair = model.with_fitted_stddev(x_train)               # the best single sigma instead
    ```

    Its likelihoods use one decoder sigma for every feature: `decoder_stddev`
    when given, else `implied_sigma`. Training never looks at it.
    """

    def __init__(self, input_size: int, code_size: int = 2, kl_weight: float = 1e-4, decoder_stddev=None,
                 seed=None, **kwargs):
        super().__init__(input_size, code_size, kl_weight, seed, **kwargs)
        self.decoder_stddev = None if decoder_stddev is None else float(decoder_stddev)
        dense = tf_keras.layers.Dense
        init = heads.seeded_initializer
        self.encoder_hidden = dense(input_size, tf.nn.leaky_relu, kernel_initializer=init(seed, 0))
        self.encoder_params = dense(2 * code_size, kernel_initializer=init(seed, 1))
        self.decoder_hidden = dense(input_size, tf.nn.leaky_relu, kernel_initializer=init(seed, 2))
        self.decoder_output = dense(input_size, kernel_initializer=init(seed, 3))
        self(tf.zeros([1, self.input_size]))

    def get_config(self):
        return {"input_size": self.input_size, "code_size": self.code_size, "kl_weight": self.kl_weight,
                "decoder_stddev": self.decoder_stddev, "seed": self.seed, "name": self.name}

    @property
    def implied_sigma(self) -> float:
        """The fixed decoder sigma, in raw units, that makes its loss a scaled negative ELBO."""
        return losses.implied_sigma(self.kl_weight, self.input_size)

    @property
    def stddev_(self) -> float:
        """The decoder sigma its likelihoods use."""
        return self.implied_sigma if self.decoder_stddev is None else self.decoder_stddev

    def with_fitted_stddev(self, x, num_samples: int = 16) -> "QuestionVAE":
        """The same network with the maximum-likelihood single sigma for rows `x`.

        sigma^2 is the mean squared reconstruction error over rows, features and
        draws of q(z|x): the fixed sigma that maximises the ELBO on `x`, which
        makes the comparison with a learned sigma fair to the question's model.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        reconstruction = self.log_weights(x, self.fixed_noise(num_samples)).loc
        sigma = float(tf.sqrt(tf.reduce_mean(tf.square(x - reconstruction))))
        fitted = QuestionVAE.from_config({**self.get_config(), "decoder_stddev": sigma})
        fitted.set_weights(self.get_weights())
        return fitted

    def posterior(self, u):
        return self.posterior_terms(u).qz

    def posterior_terms(self, u) -> Posterior:
        params = self.encoder_params(self.encoder_hidden(u))
        loc, raw_scale = params[..., :self.code_size], params[..., self.code_size:]
        posterior = tfd.MultivariateNormalDiag(loc=loc, scale_diag=tf.math.softplus(raw_scale))
        log_scale = losses.log_softplus(raw_scale)
        return Posterior(posterior, losses.rate_diagonal(loc, log_scale), log_scale)

    def decoder_params(self, z):
        reconstruction = self.decoder_output(self.decoder_hidden(z))
        return reconstruction, tf.fill(tf.shape(reconstruction), self.stddev_)

    def loss_terms(self, x, eps, training: bool = False) -> dict:
        weights = self.log_weights(x, eps)
        mse = tf.reduce_mean(tf.square(x - weights.loc), axis=[0, -1])
        return {"loss": losses.question_loss(x, weights.loc, weights.rate, self.kl_weight_now(training))[0],
                "reconstruction_loss": mse, "kl_loss": weights.rate, "mse": mse}
