"""Every exception tfp_vae raises for a problem with what it was given, each said in one line.

Messages speak in the library's terms (argument names such as `drop_nonfinite=True`);
the command line maps those names to its flags.
"""

import re
import sys
import warnings


class TfpVaeError(ValueError):
    """A problem with what the user gave (data, settings, a run folder, an export base), said in one line."""


class DataError(TfpVaeError):
    """Input data that cannot be used, with the file, row, column or shape at fault in its message."""


class RunError(TfpVaeError):
    """A run folder that cannot be used as asked."""


class TrainingDiverged(TfpVaeError):
    """The loss became NaN or infinite; the last good weights were kept."""


class ExportError(TfpVaeError):
    """An export that cannot be written: the message names the folder at fault."""


def warn(message: str) -> None:
    """A `UserWarning` attributed to the first caller outside tfp_vae: the user's own line, however deep in the
    library it was raised (training's candidates sit several calls below `train`)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "tfp_vae":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def tensorflow_message(error) -> str:
    """A TensorFlow error's first line, without the graph node it names first and the op it names last."""
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message.splitlines()[0])
    return re.sub(r"\s*\[Op:\w+\].*$", "", line)


def write_failure_cause(error) -> str:
    """Why an OSError or a TensorFlow writer failed, without the file it names ("No space left on device")."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return tensorflow_message(error).rsplit("; ", 1)[-1]
