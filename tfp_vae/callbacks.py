"""Keras callbacks for training a VAE."""

from tfp_vae._keras import tf_keras


class KLWarmup(tf_keras.callbacks.Callback):
    """Raises `model.beta` linearly from `kl_weight / epochs` to `kl_weight` over `epochs` epochs.

    Early in training the KL term can pull every posterior onto the prior before
    the decoder has learned to use the code; warming it up avoids that collapse.

    #### Example

    ```python
    model.fit(x, epochs=50, callbacks=[KLWarmup(epochs=10)])
    ```
    """

    def __init__(self, epochs: int):
        super().__init__()
        if epochs < 1:
            raise ValueError(f"KLWarmup needs at least one epoch, got {epochs}")
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        fraction = min(1.0, (epoch + 1) / self.epochs)
        self.model.beta.assign(self.model.kl_weight * fraction)
