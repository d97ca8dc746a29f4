"""Starting TensorFlow without its start-up noise, and fitting many models without its retracing warning."""

import contextlib
import logging
import os

RETRACING = "triggered tf.function retracing"


def start_tensorflow_quietly(initialize_devices: bool = True) -> None:
    """Loads TensorFlow (and its devices) with stderr closed, and keeps its Python log to errors.

    TensorFlow's C++ start-up lines (no CUDA driver, CPU features) are written
    before any log setting applies; on a CPU machine they are noise around the
    lines a reader needs. Call it before anything imports TensorFlow. Pass
    `initialize_devices=False` in a process that will create a
    `MultiWorkerMirroredStrategy`, which must configure the runtime first.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
            if initialize_devices:
                tf.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    tf.get_logger().setLevel("ERROR")


class _NoRetracingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RETRACING not in record.getMessage()


@contextlib.contextmanager
def fitting_many_models():
    """TensorFlow's warning of frequent retracing left out of its log while the block runs.

    Keras makes each model's training step from one closure, and TensorFlow
    counts a function's traces by its code: fitting the candidates of a model
    choice one after another, each tracing its own step once, reads to it as one
    function retracing, and it warns of a cost that is not there.
    """
    no_retracing = _NoRetracingWarning()
    logger = logging.getLogger("tensorflow")
    logger.addFilter(no_retracing)
    try:
        yield
    finally:
        logger.removeFilter(no_retracing)
