"""The SavedModel contract, checked the way TensorFlow Serving would use it."""

import json
import os
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from tfp_vae import GaussianVAE, QuestionVAE, export, export_saved_model, serving
from tfp_vae.export import SIGNATURES, ExportError

# Runs in a fresh interpreter that cannot import tfp_vae, TFP or tf_keras, as in TF Serving.
BLOCKED_RUNNER = r"""
import json, sys
for name in ("tfp_vae", "tensorflow_probability", "tf_keras", "keras"):
    sys.modules[name] = None
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

path, x, z = sys.argv[1], np.array(json.loads(sys.argv[2]), np.float32), np.array(json.loads(sys.argv[3]), np.float32)
loaded = tf.saved_model.load(path)
calls = {"serving_default": {"x": x}, "reconstruct": {"x": x}, "encode": {"x": x}, "score": {"x": x},
         "decode": {"z": z}, "sample": {"num_samples": tf.constant(3), "seed": tf.constant(7)}}
if "impute" in loaded.signatures:
    gappy = x.copy()
    gappy[::2, 1] = np.nan
    calls["impute"] = {"x": gappy}
results = {name: {key: value.numpy().tolist() for key, value in loaded.signatures[name](**inputs).items()}
           for name, inputs in calls.items()}
proto = saved_model_pb2.SavedModel()
proto.ParseFromString(open(path + "/saved_model.pb", "rb").read())
graph = proto.meta_graphs[0].graph_def
ops = {node.op for node in graph.node}
ops |= {node.op for function in graph.library.function for node in function.node_def}
results["ops"] = sorted(ops)
results["unregistered"] = sorted(op for op in ops if op_def_registry.get(op) is None)
results["modules"] = sorted(name for name in ("tfp_vae", "tensorflow_probability", "tf_keras")
                            if sys.modules.get(name) is not None)
print(json.dumps(results))
"""


def train(model, x):
    model.compile()
    model.fit(x, epochs=2, batch_size=100, verbose=0)
    return model


@pytest.fixture(scope="module", params=["gaussian", "whitened", "whitened, full covariance", "student_t",
                                        "yeo_johnson", "whitened, with gaps", "whitened, log, with gaps", "question"])
def exported(request, tmp_path_factory):
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(400, 4)) * [1e-3, 1.0, 1e3, 10.0] + [0.0, 1e4, 0.0, 5.0]).astype(np.float32)
    if request.param != "question":
        normalization = "whiten" if request.param.startswith("whitened") else "standardize"
        decoder_scale = {"whitened, full covariance": "full", "student_t": "student_t"}.get(request.param, "learned")
        transform = {"yeo_johnson": "yeo_johnson", "whitened, log, with gaps": "log"}.get(request.param, "none")
        model = train(GaussianVAE(4, code_size=2, hidden=(8,), normalization=normalization,
                                  decoder_scale=decoder_scale, transform=transform, seed=0,
                                  allow_missing=request.param.endswith("with gaps"),
                                  integer_columns=[3] if request.param == "yeo_johnson" else []), x)
    else:
        model = train(QuestionVAE(4, code_size=2, seed=0), x / 100)
    path = export_saved_model(model, tmp_path_factory.mktemp("exports"))
    rows, codes = x[:5], rng.normal(size=(3, 2)).astype(np.float32)
    completed = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUNNER, path, json.dumps(rows.tolist()), json.dumps(codes.tolist())],
        capture_output=True, text=True, check=True)
    return model, path, rows, codes, json.loads(completed.stdout.strip().splitlines()[-1])


def draws_differ_when_served(model) -> bool:
    """TFP's gamma sampler takes another (equally seeded, deterministic) path in the frozen graph."""
    return getattr(model, "decoder_scale", None) == "student_t"


def expected_outputs(model, rows, codes, served=None):
    """What each signature should return; a Student-t model's draws are the served ones (`served`), if given."""
    qz = model.encode(rows)
    decoded_mean, decoded_stddev, _, _ = model.decoder_outputs(codes)
    reconstruct = {name: value.numpy() for name, value in model(rows).items()}
    gappy = rows.copy()
    gappy[::2, 1] = np.nan
    imputed = ({"impute": dict(zip(("x", "stddev"), (value.numpy() for value in model.imputation(gappy))))}
               if getattr(model, "allow_missing", False) else {})
    return {**imputed, "serving_default": reconstruct, "reconstruct": reconstruct,
            "encode": {"code_mean": qz.mean().numpy(), "code_scale_tril": qz.scale.to_dense().numpy()},
            "decode": {"mean": decoded_mean.numpy(), "stddev": decoded_stddev.numpy()},
            "score": {name: value.numpy() for name, value in model.score(rows).items()},
            "sample": {"x": served.signatures["sample"](num_samples=tf.constant(3), seed=tf.constant(7))["x"].numpy()
                       if served and draws_differ_when_served(model) else model.sample(3, 7).numpy()}}


def test_signatures_without_tfp_match_the_model(exported):
    model, _, rows, codes, results = exported
    assert results["modules"] == []
    for signature, outputs in expected_outputs(model, rows, codes).items():
        assert set(results[signature]) == set(outputs), signature
        if signature == "sample" and draws_differ_when_served(model):
            assert np.shape(results["sample"]["x"]) == (3, 4) and np.isfinite(results["sample"]["x"]).all()
            continue
        for name, value in outputs.items():
            np.testing.assert_allclose(results[signature][name], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{signature}/{name}")
    served = np.asarray(results["sample"]["x"])[:, list(model.integer_columns)]
    np.testing.assert_array_equal(served, np.round(served))  # the integer columns' draws are whole numbers


def test_every_op_is_a_stock_tensorflow_op(exported):
    results = exported[-1]
    assert results["ops"] and results["unregistered"] == []


def test_score_is_deterministic(exported):
    model, path, rows, _, _ = exported
    loaded = tf.saved_model.load(path)
    first, second = loaded.signatures["score"](x=rows), loaded.signatures["score"](x=rows)
    np.testing.assert_array_equal(first["elbo"].numpy(), second["elbo"].numpy())


def test_wrong_width_is_refused_by_the_signature(exported):
    loaded = tf.saved_model.load(exported[1])
    for signature, name, shape in [("score", "x", [2, 5]), ("serving_default", "x", [2, 3]), ("decode", "z", [1, 3])]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"is not compatible with expected shape"):
            loaded.signatures[signature](**{name: tf.zeros(shape)})


def test_saved_model_cli_shows_and_runs_the_signatures(exported):
    model, path, rows, _, _ = exported
    shown = subprocess.run(["saved_model_cli", "show", "--all", "--dir", path],
                           capture_output=True, text=True, check=True).stdout
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in shown
    assert shown.count("Method name is: tensorflow/serving/predict") >= len(SIGNATURES)
    ran = subprocess.run(
        ["saved_model_cli", "run", "--dir", path, "--tag_set", "serve", "--signature_def", "score",
         "--input_exprs", f"x={rows[:2].tolist()}"], capture_output=True, text=True, check=True).stdout
    printed = re.search(r"elbo:?\s*\[([^\]]*)\]", ran.replace("\n", " "))
    assert printed, ran
    np.testing.assert_allclose(np.array(printed.group(1).split(), float), model.score(rows[:2])["elbo"].numpy(),
                               rtol=1e-4)


def serve_rest(loaded, body):
    """What TF Serving's REST handler does: rows stacked into a batch, or named tensors as given."""
    signature = loaded.signatures[body["signature_name"]]
    spec = signature.structured_input_signature[1]
    if "instances" in body:
        instances = body["instances"]
        named = instances if isinstance(instances[0], dict) else [{next(iter(spec)): row} for row in instances]
        inputs = {name: tf.constant([row[name] for row in named], spec[name].dtype) for name in spec}
        outputs = {name: value.numpy() for name, value in signature(**inputs).items()}
        return {"predictions": [{name: value[i].tolist() for name, value in outputs.items()}
                                for i in range(len(named))]}
    inputs = {name: tf.constant(value, spec[name].dtype) for name, value in body["inputs"].items()}
    return {"outputs": {name: value.numpy().tolist() for name, value in signature(**inputs).items()}}


def serve_grpc(loaded, request):
    """What TF Serving's gRPC handler does: TensorProtos in, TensorProtos out."""
    from tensorflow_serving.apis import predict_pb2
    signature = loaded.signatures[request.model_spec.signature_name or "serving_default"]
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    response = predict_pb2.PredictResponse()
    for name, value in signature(**inputs).items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def request_inputs(rows, codes):
    return {"serving_default": {"x": rows}, "reconstruct": {"x": rows}, "encode": {"x": rows},
            "score": {"x": rows}, "decode": {"z": codes}, "sample": {"num_samples": 3, "seed": 7}}


def test_rest_and_grpc_requests_for_every_signature(exported):
    model, path, rows, codes, _ = exported
    loaded = tf.saved_model.load(path)
    expected = expected_outputs(model, rows, codes, served=loaded)
    for signature, inputs in request_inputs(rows, codes).items():
        body = json.loads(json.dumps(serving.rest_body(signature, inputs, columnar=True)))
        for name, value in serve_rest(loaded, body)["outputs"].items():
            np.testing.assert_allclose(value, expected[signature][name], rtol=1e-5, atol=1e-6)
        if signature != "sample":
            body = json.loads(json.dumps(serving.rest_body(signature, inputs)))
            predictions = serve_rest(loaded, body)["predictions"]
            assert len(predictions) == len(next(iter(inputs.values())))
            for name, value in expected[signature].items():
                np.testing.assert_allclose([row[name] for row in predictions], value, rtol=1e-5, atol=1e-6)
        response = serve_grpc(loaded, serving.grpc_request("tfp_vae", signature, inputs))
        assert set(response.outputs) == set(expected[signature])
        for name, value in expected[signature].items():
            np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), value, rtol=1e-5, atol=1e-6)


def test_warmup_requests_cover_every_signature_and_run(exported):
    from tensorflow_serving.apis import prediction_log_pb2
    model, path, _, _, _ = exported
    loaded = tf.saved_model.load(path)
    seen = []
    for record in tf.data.TFRecordDataset(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        seen.append(request.model_spec.signature_name)
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert all(np.isfinite(value.numpy()).all() for value in outputs.values()), request.model_spec.signature_name
    assert sorted(seen) == sorted(SIGNATURES + (("impute",) if getattr(model, "allow_missing", False) else ()))


def test_existing_version_is_refused_and_left_untouched(exported, tmp_path):
    model = exported[0]
    first = export_saved_model(model, tmp_path, version=3)
    before = sorted(os.listdir(first))
    with pytest.raises(ExportError, match="version 3 already exists"):
        export_saved_model(model, tmp_path, version=3)
    assert sorted(os.listdir(first)) == before
    assert export_saved_model(model, tmp_path) == str(tmp_path / "4")


def test_interrupted_export_leaves_no_version_folder(exported, tmp_path, monkeypatch):
    def interrupted(module, path, signatures, options):
        os.makedirs(os.path.join(path, "variables"))
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(exported[0], tmp_path)
    assert os.listdir(tmp_path) == []


def test_weights_are_constants_in_the_graph(exported):
    assert not {"ReadVariableOp", "VarHandleOp"} & set(exported[4]["ops"])


def test_weights_too_large_to_fold_are_refused(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_FROZEN_WEIGHT_BYTES", 16)
    with pytest.raises(ExportError, match=r"MiB of weights is more than"):
        export_saved_model(exported[0], tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.environ.get("TFP_VAE_SERVING_URL"),
                    reason="set TFP_VAE_SERVING_URL (e.g. http://localhost:8501/v1/models/tfp_vae) "
                           "to test against a running TensorFlow Serving")
def test_live_model_server():
    url = os.environ["TFP_VAE_SERVING_URL"].rstrip("/")
    with urllib.request.urlopen(url + "/metadata", timeout=10) as reply:
        metadata = json.load(reply)
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    width = int(signatures["score"]["inputs"]["x"]["tensor_shape"]["dim"][1]["size"])
    body = json.dumps(serving.rest_body("score", {"x": np.zeros((2, width))})).encode()
    request = urllib.request.Request(url + ":predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        predictions = json.load(reply)["predictions"]
    assert len(predictions) == 2
    assert set(predictions[0]) == {"elbo", "reconstruction_log_prob", "kl"}
    assert all(np.isfinite(row["elbo"]) for row in predictions)
