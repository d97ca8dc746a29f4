r"""Why a cell is missing: p(s|x) for the mask s (1 observed, 0 missing), a layer per mechanism.

    at-random      p(s|x) does not depend on the missing values: it leaves the
                   likelihood of the observed cells alone (MIWAE; `AtRandom`)
    self-masking   p(s_d = 0 | x_d) = sigmoid(w_d (u_d - b_d)), u_d the cell in
                   standardised units: a value can be missing because of what it
                   is, as a sensor saturates or a lab test is skipped when a value
                   looks normal (not-MIWAE, Ipsen, Mattei and Frellsen 2021;
                   `SelfMasking`)
    self-masking-high, self-masking-low
                   the same with the direction known: w_d > 0, larger values
                   more often missing (a sensor that saturates), or w_d < 0
                   (`SelfMaskingHigh`, `SelfMaskingLow`)

The direction of a learned w is identified only through the Gaussian shape of
the values' law: selection keeps to linear models with a shared sigma then
(`tfp_vae.select`), whose law is Gaussian, not networks, whose sigma(z) bends
it. Even so training can settle on the wrong direction for a column (in the
not-at-random benchmark it did for one of wine's six): where it is known, say
so. That shape is also why these mechanisms refuse a learned per-feature
transform: fitted to the observed cells, which the mechanism says are not
representative, it reshapes the Gaussian at will, and its tail extrapolates (on
digits, fills of 600 in a column of values up to 17).

A model whose mechanism is not at random scores a row by importance weights over
pairs (z, x_missing), x_missing drawn from the decoder, each weighted by
p(x_observed|z) p(s|x) p(z) / q(z|x_observed): its likelihoods are of the cells
and their mask together, log p(x_observed, s).
"""

import tensorflow as tf

from tfp_vae._keras import serializable, tf_keras
from tfp_vae.heads import base_config
from tfp_vae.saving import RestorableLayer


@serializable
class AtRandom(RestorableLayer, tf_keras.layers.Layer):
    """Missing at random (`missing_mechanism="at-random"`): no term, no draws of the missing cells.

    #### Example

    ```python
    AtRandom(input_size=3).log_prob(u, mask)  # ==> 0 for every row
    ```
    """

    draws_missing_values = False

    def __init__(self, input_size: int, **kwargs):
        super().__init__(**kwargs)
        self.input_size = input_size

    def log_prob(self, u, mask):
        """log p(s|x) per row, for rows `u` [..., D] in standardised units and their mask `s` [..., D]."""
        return tf.zeros(tf.shape(u)[:-1])

    def get_config(self):
        return {**base_config(self), "input_size": self.input_size}


@serializable
class SelfMasking(AtRandom):
    """Each feature's chance of being missing is a logistic function of its own value (`"self-masking"`).

    `w` and `b` start at 0: every cell missing with probability one half whatever its value, the
    at-random model, from which training moves as the data says. A subclass with a `direction`
    (+1 or -1) keeps w's sign at it: w = direction * softplus(v), v starting at 0.

    #### Example

    ```python
    layer = SelfMasking(input_size=2)
    layer.log_prob(tf.constant([[0.5, 2.0]]), tf.constant([[1.0, 0.0]]))  # ==> [2 log(1/2)] at the start
    ```
    """

    draws_missing_values = True
    direction = 0  # the sign of w, where known

    def __init__(self, input_size: int, **kwargs):
        super().__init__(input_size, **kwargs)
        self.weight = self.add_weight("weight", shape=[input_size], initializer="zeros")
        self.offset = self.add_weight("offset", shape=[input_size], initializer="zeros")

    def missing_logits(self, u):
        """logit p(s_d = 0 | u_d) of each cell."""
        return self.slope * (u - self.offset)

    @property
    def slope(self):
        """w, each feature's logit per standardised unit."""
        return self.direction * tf.nn.softplus(self.weight) if self.direction else self.weight

    def log_prob(self, u, mask):
        logits = self.missing_logits(u)
        # log sigmoid(l) = -softplus(-l) for a missing cell, log (1 - sigmoid(l)) = -softplus(l) for an observed one.
        return -tf.reduce_sum(mask * tf.nn.softplus(logits) + (1.0 - mask) * tf.nn.softplus(-logits), axis=-1)


@serializable
class SelfMaskingHigh(SelfMasking):
    """`SelfMasking` where larger values are more often missing (`"self-masking-high"`): w > 0.

    #### Example

    ```python
    SelfMaskingHigh(input_size=2).slope  # ==> [log 2, log 2] at the start
    ```
    """

    direction = 1


@serializable
class SelfMaskingLow(SelfMasking):
    """`SelfMasking` where smaller values are more often missing (`"self-masking-low"`): w < 0.

    #### Example

    ```python
    SelfMaskingLow(input_size=2).slope  # ==> [-log 2, -log 2] at the start
    ```
    """

    direction = -1


MECHANISMS = {"at-random": AtRandom, "self-masking": SelfMasking, "self-masking-high": SelfMaskingHigh,
              "self-masking-low": SelfMaskingLow}
