"""Requests for TensorFlow Serving, in both of its formats, for an exported model.

REST: `POST http://HOST:8501/v1/models/<name>:predict` with `rest_body(...)` as
JSON. Row format (`instances`) sends one entry per row and answers
`{"predictions": [...]}`, one per row; columnar format (`inputs`) sends whole
tensors and answers `{"outputs": {...}}`. Signatures with scalar inputs
(`sample`) take the columnar format only.

gRPC: `grpc_request(...)` builds a `tensorflow.serving.PredictRequest` for
`PredictionService.Predict` on port 8500 (needs `tensorflow-serving-api`).

Warm-up: `warmup_record(...)` is one `tensorflow.serving.PredictionLog`, the
record TF Serving replays from `assets.extra/tf_serving_warmup_requests` when it
loads a model, so that the first real request does not pay for the graph's first
run. It is written with TensorFlow's own protos and the protobuf wire format, so
exporting needs no `tensorflow-serving-api`.
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


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2): a string, bytes or a message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def warmup_record(signature_name: str, inputs: dict) -> bytes:
    """A serialized `PredictionLog` whose `predict_log.request` calls `signature_name` with `inputs` (TensorProtos).

    Field numbers from tensorflow_serving/apis: PredictionLog.predict_log = 6,
    PredictLog.request = 1, PredictRequest.model_spec = 1 and .inputs = 2 (a map:
    entries of key = 1, value = 2), ModelSpec.signature_name = 3.
    """
    import tensorflow as tf
    request = _field(1, _field(3, signature_name.encode()))
    for name, value in inputs.items():
        request += _field(2, _field(1, name.encode()) + _field(2, tf.make_tensor_proto(value).SerializeToString()))
    return _field(6, _field(1, request))


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
