"""A local stand-in for TF Serving that runs real exported SavedModels, for client tests.

`TFServingStub` speaks TF Serving's REST predict protocol on 127.0.0.1 (OS-chosen port):
``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` with the columnar ``inputs`` or row
``instances`` format, answering ``{"outputs": ...}`` or ``{"predictions": ...}`` like the real
server (a signature with a single output loses its name), errors as ``{"error": "..."}`` with 400
for a bad request or an unknown label and 404 for an unknown model or version;
``GET /v1/models/NAME[/versions/N|/labels/L]`` gives the status. `GrpcPredictionService` answers
``PredictionService.Predict`` from the same models (``model_spec.version`` or
``version_label``), and reports the version that answered in the response's ``model_spec``.
Like TF Serving it answers every request: a malformed one (a non-numeric Content-Length, a
non-string ``signature_name``, ...) gets a 400 with the reason, an unexpected failure a 500;
TensorFlow errors are passed on whole, less their stack noise (``tf_error_text``).

Labels come from the export dir's ``models.config`` (re-read when it changes, as TF Serving
polls it) or from a fixed ``labels={model: {label: version}}`` mapping.

Both can be told to fail the next N requests (`fail_next`) to test client retries and timeouts.
The models are loaded with ``tf.saved_model.load`` from an export dir, so the stand-in runs the
same graphs TF Serving would; only the HTTP/gRPC plumbing is ours.
"""
from __future__ import annotations

import collections
import json
import os
import re
import socket
import struct
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

from serving.backends import tf_error_text
from tfrs_movies import contract, tf_serving_config

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?::(?P<verb>[a-z]+))?$")


class StubError(Exception):
    """An error TF Serving would report: HTTP status, gRPC code name and message."""

    _GRPC = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE", 500: "INTERNAL"}

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = self._GRPC.get(status, "UNKNOWN")


class ModelRepository:
    """Loads ``export_dir/NAME/VERSION`` SavedModels on first use and runs a signature.

    ``labels``: ``{model: {label: version}}``; None reads them from ``export_dir/models.config``.
    """

    def __init__(self, export_dir: str, labels: dict[str, dict[str, int]] | None = None):
        self.export_dir = export_dir
        self.labels = labels
        self._loaded: dict[tuple[str, int], object] = {}
        self._lock = threading.Lock()

    def label_version(self, name: str, label: str) -> int:
        """The version ``label`` points at for model ``name``, as TF Serving resolves it."""
        if self.labels is not None:
            version = self.labels.get(name, {}).get(label)
        else:
            entry = tf_serving_config.entry_for(self.export_dir, name)
            version = entry.label(label) if entry is not None else None
        if version is None:
            raise StubError(400, f"Unrecognized servable version label: {label}")
        return version

    def versions(self, name: str) -> list[int]:
        model_dir = os.path.join(self.export_dir, name)
        if not os.path.isdir(model_dir):
            return []
        return sorted(int(d) for d in os.listdir(model_dir) if d.isdigit())

    def signature(self, name: str, version: int | None, signature_name: str,
                  label: str | None = None):
        """(signature function, the version it belongs to)."""
        if label is not None:
            version = self.label_version(name, label)
        versions = self.versions(name)
        if not versions or (version is not None and version not in versions):
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise StubError(404, f"Servable not found for request: {spec}")
        version = versions[-1] if version is None else version
        with self._lock:
            if (name, version) not in self._loaded:
                path = os.path.join(self.export_dir, name, str(version))
                with open(os.path.join(path, "saved_model.pb"), "rb") as f:
                    if b"Scann" in f.read():
                        import scann  # noqa: F401  (registers the ScaNN ops)
                self._loaded[name, version] = tf.saved_model.load(path)
        loaded = self._loaded[name, version]
        if signature_name not in loaded.signatures:
            raise StubError(400, f'Serving signature name: "{signature_name}" not found in '
                                 f"signature def")
        return loaded.signatures[signature_name], version

    def run(self, name: str, version: int | None, signature_name: str,
            inputs: dict[str, object], label: str | None = None
            ) -> tuple[dict[str, np.ndarray], int]:
        """(outputs, the version that answered)."""
        fn, version = self.signature(name, version, signature_name, label)
        specs = fn.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise StubError(400, f"Missing or unexpected inputs: expected {sorted(specs)}, "
                                 f"got {sorted(inputs)}")
        try:
            tensors = {k: tf.constant(inputs[k], dtype=specs[k].dtype) for k in specs}
            outputs = fn(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise StubError(400, tf_error_text(str(err))) from None
        return {k: v.numpy() for k, v in outputs.items()}, version


def _jsonable(array: np.ndarray):
    if array.dtype.kind in "OS":
        return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else b,
                            otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


class _Failures:
    """A thread-safe queue of injected failures: ("status", 503), ("reset", None), ("delay", s)."""

    def __init__(self):
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int, kind: str, value) -> None:
        with self._lock:
            self._queue.extend([(kind, value)] * n)

    def pop(self):
        with self._lock:
            return self._queue.popleft() if self._queue else None


class TFServingStub:
    """TF Serving's REST API on 127.0.0.1:<free port>, in a background thread.

    Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``; ``requests`` records
    ``(method, path)`` of every request received.
    """

    def __init__(self, export_dir: str, repository: ModelRepository | None = None,
                 labels: dict[str, dict[str, int]] | None = None):
        self.repository = repository or ModelRepository(export_dir, labels)
        self.requests: list[tuple[str, str]] = []
        self.failures = _Failures()
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def fail_next(self, n: int, status: int | None = None, *, reset: bool = False,
                  delay: float | None = None, retry_after: str | None = None) -> None:
        """The next n requests get HTTP ``status``, a connection reset, or a ``delay`` (s)."""
        if reset:
            self.failures.add(n, "reset", None)
        elif delay is not None:
            self.failures.add(n, "delay", delay)
        else:
            self.failures.add(n, "status", (status or 503, retry_after))

    def start(self) -> TFServingStub:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # e.g. a client that timed out closed the socket before our delayed reply


class _Handler(BaseHTTPRequestHandler):
    owner: TFServingStub

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.owner.requests.append(("GET", self.path))
        match = _PATH.match(self.path)
        if not match or match["verb"]:
            return self._reply(404, {"error": f"Malformed request: GET {self.path}"})
        versions = self.owner.repository.versions(match["name"])
        if not versions:
            return self._reply(404, {"error": f"Could not find any versions of model "
                                              f"{match['name']}"})
        try:
            if match["label"]:
                versions = [self.owner.repository.label_version(match["name"], match["label"])]
        except StubError as err:
            return self._reply(err.status, {"error": str(err)})
        if match["version"]:
            versions = [v for v in versions if v == int(match["version"])]
            if not versions:
                return self._reply(404, {"error": f"Servable not found for request: Specific("
                                                  f"{match['name']}, {match['version']})"})
        self._reply(200, {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for v in versions]})

    def do_POST(self) -> None:
        self.owner.requests.append(("POST", self.path))
        length = self.headers.get("Content-Length", "0").strip()
        if not length.isdigit():  # TF Serving's HTTP server refuses these too
            self.close_connection = True
            return self._reply(400, {"error": f"Invalid Content-Length header {length!r}: "
                                              f"expected a number of bytes"})
        body = self.rfile.read(int(length))
        failure = self.owner.failures.pop()
        if failure is not None:
            kind, value = failure
            if kind == "reset":
                # SO_LINGER 0 makes close() send a TCP RST: the client sees a reset connection.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            if kind == "status":
                status, retry_after = value
                headers = {"Retry-After": retry_after} if retry_after else {}
                return self._reply(status, {"error": "injected failure"}, headers)
            time.sleep(value)
        match = _PATH.match(self.path)
        if not match or match["verb"] != "predict":
            return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
        try:
            self._reply(200, self._predict(match, body))
        except StubError as err:
            self._reply(err.status, {"error": str(err)})
        except Exception as err:  # a stand-in bug: answer it, never drop the connection
            self._reply(500, {"error": f"{type(err).__name__}: {err}"})

    def _predict(self, match, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
            raise StubError(400, f"JSON Parse error: {err}") from None
        if not isinstance(request, dict):
            raise StubError(400, "JSON Value: request body is not an object")
        if ("inputs" in request) == ("instances" in request):
            raise StubError(400, "Missing 'inputs' or 'instances' key (exactly one is needed)")
        version = int(match["version"]) if match["version"] else None
        label = match["label"]
        signature_name = request.get("signature_name", contract.SIGNATURE)
        if not isinstance(signature_name, str):
            raise StubError(400, f"JSON Value: {json.dumps(signature_name)} Type: "
                                 f"{type(signature_name).__name__} is not of expected type: "
                                 f"string (signature_name)")
        fn, version = self.owner.repository.signature(match["name"], version, signature_name,
                                                      label)
        input_names = sorted(fn.structured_input_signature[1])
        columnar = "inputs" in request
        if columnar:
            inputs = request["inputs"]
            if not isinstance(inputs, dict):  # a bare value for a single-input signature
                if len(input_names) != 1:
                    raise StubError(400, "inputs must be an object for a multi-input signature")
                inputs = {input_names[0]: inputs}
        else:
            instances = request["instances"]
            if not isinstance(instances, list) or not instances:
                raise StubError(400, "instances must be a non-empty list")
            if all(isinstance(row, dict) for row in instances):
                inputs = {k: [row.get(k) for row in instances] for k in instances[0]}
            elif len(input_names) == 1:
                inputs = {input_names[0]: instances}
            else:
                raise StubError(400, "instances must be objects for a multi-input signature")
        outputs, _ = self.owner.repository.run(match["name"], version, signature_name, inputs)
        if columnar:
            if len(outputs) == 1:  # TF Serving omits the name of a sole output
                return {"outputs": _jsonable(next(iter(outputs.values())))}
            return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
        lists = {k: _jsonable(v) for k, v in outputs.items()}
        batch = len(next(iter(lists.values())))
        if len(lists) == 1:
            return {"predictions": next(iter(lists.values()))}
        return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(batch)]}

    def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class GrpcPredictionService:
    """TF Serving's gRPC ``PredictionService.Predict`` on 127.0.0.1:<free port>.

    ``address`` is ``127.0.0.1:PORT``; ``fail_next(n)`` answers the next n calls UNAVAILABLE.
    Needs grpcio and tensorflow-serving-api.
    """

    def __init__(self, export_dir: str, repository: ModelRepository | None = None,
                 labels: dict[str, dict[str, int]] | None = None):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.repository = repository or ModelRepository(export_dir, labels)
        self.failures = _Failures()
        self.calls = 0
        owner = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                return owner._predict(request, context)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(),
                                                                            self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"

    def fail_next(self, n: int, *, delay: float | None = None) -> None:
        """The next n calls answer UNAVAILABLE, or sleep ``delay`` seconds first."""
        if delay is not None:
            self.failures.add(n, "delay", delay)
        else:
            self.failures.add(n, "status", None)

    def _predict(self, request, context):
        import grpc
        from tensorflow_serving.apis import predict_pb2

        self.calls += 1
        failure = self.failures.pop()
        if failure is not None:
            kind, value = failure
            if kind == "status":
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
            time.sleep(value)
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" \
            else None
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        try:
            outputs, version = self.repository.run(
                spec.name, version, spec.signature_name or contract.SIGNATURE, inputs, label)
        except StubError as err:
            context.abort(getattr(grpc.StatusCode, err.code), str(err))
        response = predict_pb2.PredictResponse()
        # Like TF Serving: the effective spec names the version that answered, never the label.
        response.model_spec.name = spec.name
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        response.model_spec.version.value = version
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def start(self) -> GrpcPredictionService:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.stop(grace=None).wait(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
