"""Requests for TensorFlow Serving, in both of its formats, for an exported model.

REST: `POST http://HOST:8501/v1/models/<name>:predict` with `rest_body(...)` as
JSON. Row format (`instances`) sends one entry per row and answers
`{"predictions": [...]}`, one per row; columnar format (`inputs`) sends whole
tensors and answers `{"outputs": {...}}`. Signatures with scalar inputs
(`sample`) take the columnar format only.

gRPC: `grpc_request(...)` builds a `tensorflow.serving.PredictRequest` for
`PredictionService.Predict` on port 8500 (needs `tensorflow-serving-api`).
"""

import numpy as np


def _plain(value):
    return np.asarray(value).tolist()


def rest_body(signature_name: str, inputs: dict, columnar: bool = False) -> dict:
    """The JSON body of a REST predict request.

    `inputs` maps input names to arrays (or scalars). Row format lists each row;
    a signature with one input sends bare rows, as TF Serving's docs show.
    """
    if columnar:
        return {"signature_name": signature_name, "inputs": {name: _plain(v) for name, v in inputs.items()}}
    if len(inputs) == 1:
        (value,) = inputs.values()
        return {"signature_name": signature_name, "instances": _plain(value)}
    rows = zip(*(np.asarray(v) for v in inputs.values()))
    return {"signature_name": signature_name,
            "instances": [{name: _plain(v) for name, v in zip(inputs, row)} for row in rows]}


def grpc_request(model_name: str, signature_name: str, inputs: dict):
    """A `PredictRequest` carrying `inputs` as TensorProtos (float32 arrays, int32 scalars kept)."""
    import tensorflow as tf
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError as error:
        raise ImportError("gRPC requests need tensorflow-serving-api: pip install 'tfp-vae[serving]'") from error
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        array = np.asarray(value)
        dtype = np.int32 if np.issubdtype(array.dtype, np.integer) else np.float32
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array.astype(dtype)))
    return request
