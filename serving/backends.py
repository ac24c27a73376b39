"""Three ways to run an exported model's signatures, one interface.

Every backend has ``predict(model, inputs, version=None, label=None) -> dict[str, np.ndarray]``:
``inputs`` maps input names to numpy arrays (strings as Python ``str``), the result maps output
names to numpy arrays with strings decoded to Python ``str`` (dtype ``object``), floats as
``float32`` and booleans as ``bool``, so the three backends return identical values for the
same export. ``signature=`` (keyword) names another signature than ``serving_default``, e.g.
the ``lookup`` every model has (`tfrs_movies.contract.LOOKUP`) or ``with_history``
(`tfrs_movies.contract.WITH_HISTORY`); REST sends it as ``signature_name``, gRPC as
``model_spec.signature_name``. ``version``
asks for a version number, ``label`` for a version label of the export's ``models.config``
(``stable``, ``canary``; at most one of the two; neither: the latest version).
``answer(...)`` takes the same arguments and returns an `Answer`: the outputs and the version
that answered, as far as the backend can tell.

- `LocalBackend`: loads ``EXPORT_DIR/<model>/<version>/`` with ``tf.saved_model.load``, the same
  graph TF Serving runs; for tests, notebooks and offline batch scoring.
- `RestBackend`: TF Serving's REST predict API, standard library only (no ``requests``).
- `GrpcBackend`: TF Serving's gRPC ``PredictionService.Predict`` (needs the ``[serving]`` extra).

Remote backends retry only what is safe and likely to pass on a second try: refused
connections, connections the server dropped without answering (a restart), HTTP 503/429 and
gRPC UNAVAILABLE (TF Serving answers UNAVAILABLE/503 when its batching queue is full), with
exponential backoff. Timeouts and errors the server answered (HTTP 4xx/500, other gRPC codes)
are not retried, even when the server then drops the connection: the request was rejected
and would be again. A `ServingError` carries the server's whole message, with TensorFlow's
stack noise trimmed (`tf_error_text`).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfrs_movies import contract, paths, tf_serving_config
from tfrs_movies.errors import UserError

SIGNATURE = contract.SIGNATURE
# Name under which a response without output names is returned: TF Serving drops the name when a
# signature has a single output (``{"outputs": [...]}``); `RecommenderClient` maps it back.
UNNAMED_OUTPUT = ""
_RETRY_HTTP_STATUS = (429, 503)
_SERVING_EXTRA_HINT = "install the serving extra: pip install 'tfrs-movies[serving]'"


class ServingError(Exception):
    """The model server (or a local model) rejected or failed a request.

    Attributes:
      status: HTTP status code for REST (e.g. 400, 404, 503), else None.
      code: gRPC status code name (e.g. "INVALID_ARGUMENT", "UNAVAILABLE"), else None.
      model: the model the request was for, when known.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 model: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.model = model


@dataclass(frozen=True)
class Answer:
    """A backend's reply: the outputs of `predict` and the version that produced them.

    Attributes:
      outputs: output name -> array, as `predict` returns them.
      version: the version that answered: the local backend and TF Serving's gRPC response
        (``model_spec.version``) know it; over REST it is the asked version, or for a label
        the version the server's model status gives for that label right after the answer
        (a promote landing in between can misname it); None when unknown.
    """

    outputs: dict[str, np.ndarray]
    version: int | None


def check_choice(version: int | None, label: str | None) -> None:
    """At most one of a version number (>= 1) and a valid label, else `UserError`."""
    if version is not None and label is not None:
        raise UserError(f"give a version or a label, not both (got version {version} and "
                        f"label {label!r})")
    if version is not None and (isinstance(version, bool) or not isinstance(
            version, (int, np.integer)) or version < 1):
        raise UserError(f"version must be an int >= 1, got {version!r}")
    if label is not None:
        tf_serving_config.check_label(label)


def decode_strings(array: np.ndarray) -> np.ndarray:
    """bytes/str array of any shape -> same-shape ``object`` array of Python ``str`` (UTF-8)."""
    array = np.asarray(array)
    if array.dtype.kind not in "OSU":
        return array
    return np.asarray(_DECODE(array), dtype=object).reshape(array.shape)


_DECODE = np.frompyfunc(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v), 1, 1)


def _normalize(array: np.ndarray) -> np.ndarray:
    """Strings to ``object`` str arrays, floats to float32 and ints to int32, so every backend
    agrees (JSON numbers would otherwise come back as int64)."""
    array = decode_strings(array)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        return array.astype(np.int32)
    return array


_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node .* defined at \(most recent "
                       r"call last\):|<stack traces unavailable>|Node: .*|\s+.*)$")
_TF_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]|\s*\[\[\{\{node [^}]*\}\}\]\]")


def tf_error_text(text: str) -> str:
    """A TensorFlow error message without its stack noise, on one line.

    Drops ``Graph execution error:``, the ``Detected at node ... defined at`` block and its
    (indented) stack lines, ``[[{{node ...}}]]`` and ``[Op:...]``; keeps every other line,
    e.g. ``assertion failed: [user_id and exclude_movie_ids need the same batch size] ...``.
    """
    lines = [_TF_OP_SUFFIX.sub("", line).strip() for line in str(text).splitlines()
             if not _TF_NOISE.match(line)]
    kept = " ".join(line for line in lines if line)
    return kept or " ".join(str(text).split())


def _backoff_delays(retries: int, backoff: float, max_backoff: float) -> list[float]:
    """Exponential backoff: backoff, 2*backoff, 4*backoff, ... capped at max_backoff."""
    return [min(max_backoff, backoff * 2**attempt) for attempt in range(retries)]


def _check_retry_args(timeout: float, retries: int, backoff: float) -> None:
    if not timeout > 0:
        raise UserError(f"timeout must be > 0 seconds, got {timeout!r}")
    if not isinstance(retries, int) or retries < 0:
        raise UserError(f"retries must be an int >= 0, got {retries!r}")
    if backoff < 0:
        raise UserError(f"backoff must be >= 0 seconds, got {backoff!r}")


class LocalBackend:
    """Runs the exported SavedModels in this process with TensorFlow.

    Args:
      export_dir: the export root holding ``<model>/<version>/saved_model.pb``.
      versions: optional ``{model: version}`` pins; other models use their highest version.
    """

    def __init__(self, export_dir: str | os.PathLike, versions: Mapping[str, int] | None = None):
        self.export_dir = os.fspath(export_dir)
        if not os.path.isdir(self.export_dir):
            raise UserError(f"export dir {self.export_dir!r} does not exist or is not a directory")
        if paths.kind_of_dir(self.export_dir) == "run":
            raise UserError(f"{self.export_dir} is a run directory (`trainer train` wrote it), "
                            f"not an export: export it with `python -m trainer export --run "
                            f"{self.export_dir} --export-dir exports/NAME` and pass that, or ask "
                            f"the run itself with `python -m trainer recommend --run "
                            f"{self.export_dir} --user ID`")
        self.versions = dict(versions or {})
        self._signatures: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()  # batch scorers may call from several threads

    def model_path(self, model: str, version: int | None = None,
                   label: str | None = None) -> str:
        """``export_dir/model/<version>`` for the given version, the version ``label`` points
        at in ``models.config`` (re-read when it changes), the pinned version, or else the
        highest version: the highest one ``models.config`` keeps loaded when it lists versions
        (as TF Serving would serve), otherwise the highest on disk."""
        check_choice(version, label)
        model_dir = os.path.join(self.export_dir, model)
        if not os.path.isdir(model_dir):
            raise ServingError(f"no model {model!r} in export dir {self.export_dir!r}",
                               code="NOT_FOUND", model=model)
        available = sorted(int(d) for d in os.listdir(model_dir)
                           if d.isdigit() and os.path.isdir(os.path.join(model_dir, d)))
        if label is not None:
            try:
                version = tf_serving_config.resolve_label(self.export_dir, model, label)
            except tf_serving_config.UnknownLabel as err:
                raise ServingError(f"Unrecognized servable version label: {label} ({err})",
                                   code="INVALID_ARGUMENT", model=model) from None
        version = version if version is not None else self.versions.get(model)
        if version is None:
            entry = tf_serving_config.entry_for(self.export_dir, model)
            listed = [v for v in available if entry is not None and v in entry.versions]
            if not available:
                raise ServingError(f"model dir {model_dir!r} has no numeric version directory",
                                   code="NOT_FOUND", model=model)
            version = (listed or available)[-1]
        elif int(version) not in available:
            raise ServingError(f"model {model!r} has no version {version} in {model_dir!r} "
                               f"(available: {available})", code="NOT_FOUND", model=model)
        return os.path.join(model_dir, str(int(version)))

    def load(self, model: str, version: int | None = None, label: str | None = None) -> int:
        """Loads ``model`` (the version a request with these pins would get) unless it is
        loaded already; returns its version. A request loads it too: this lets a job load
        it first, apart from the time it measures."""
        return self._loaded(model, version, label)[1]

    def _loaded(self, model: str, version: int | None, label: str | None):
        """(the loaded SavedModel, its version)."""
        path = self.model_path(model, version, label)
        key = (model, int(os.path.basename(path)))
        with self._lock:
            if key not in self._signatures:
                self._signatures[key] = self._load(path, model)
        return self._signatures[key], key[1]

    def _signature(self, model: str, version: int | None, label: str | None = None,
                   signature: str = SIGNATURE):
        """(the signature's function, the version it belongs to)."""
        loaded, version = self._loaded(model, version, label)
        if signature not in loaded.signatures:
            raise ServingError(f"{self.model_path(model, version)!r} has no {signature!r} "
                               f"signature (has: {sorted(loaded.signatures)})", code="NOT_FOUND",
                               model=model)
        return loaded.signatures[signature], version

    def _load(self, path: str, model: str):
        import tensorflow as tf

        _maybe_import_scann(path)
        try:
            loaded = tf.saved_model.load(path)
        except Exception as err:  # a half-written or incompatible export
            raise ServingError(f"cannot load {path!r}: {err}", code="INTERNAL",
                               model=model) from err
        # Keep `loaded` alive: the signatures' captured tables and variables live on it.
        return loaded

    def predict(self, model: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                label: str | None = None, *, signature: str = SIGNATURE
                ) -> dict[str, np.ndarray]:
        return self.answer(model, inputs, version, label, signature=signature).outputs

    def answer(self, model: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
               label: str | None = None, *, signature: str = SIGNATURE) -> Answer:
        import tensorflow as tf

        fn, version = self._signature(model, version, label, signature)
        specs = fn.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise ServingError(f"model {model!r} takes inputs {sorted(specs)}, got "
                               f"{sorted(inputs)}", code="INVALID_ARGUMENT", model=model)
        try:
            tensors = {name: tf.constant(np.asarray(value), dtype=specs[name].dtype)
                       for name, value in inputs.items()}
            outputs = fn(**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
            raise ServingError(f"model {model!r} rejected the request: "
                               f"{tf_error_text(str(err))}", code="INVALID_ARGUMENT",
                               model=model) from err
        return Answer({name: _normalize(value.numpy()) for name, value in outputs.items()},
                      version)

    def close(self) -> None:
        self._signatures.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _maybe_import_scann(path: str) -> None:
    """Registers the ScaNN ops before loading an export whose graph uses them.

    Brute-force exports do not need ScaNN, so it is imported only when ``saved_model.pb`` names
    a ScaNN op (the ops are registered by ``import scann``, which loads ``_scann_ops.so``).
    """
    pb = os.path.join(path, "saved_model.pb")
    try:
        with open(pb, "rb") as f:
            uses_scann = b"Scann" in f.read()
    except OSError:
        return  # tf.saved_model.load reports the missing file with a better message
    if uses_scann:
        try:
            import scann  # noqa: F401
        except ImportError as err:
            raise ServingError(f"{path!r} is a ScaNN-indexed export; install ScaNN "
                               f"(pip install 'scann[tf]') to load it: {err}",
                               code="FAILED_PRECONDITION") from err


class RestBackend:
    """TF Serving REST API: ``POST {url}/v1/models/NAME[/versions/N|/labels/L]:predict``.

    Sends the columnar format ``{"signature_name": ..., "inputs": {name: nested list}}`` and
    reads ``{"outputs": {name: nested list}}`` (or ``{"outputs": [...]}`` for a single output).
    Connects directly with ``http.client`` (no HTTP proxy), one connection per request, so it
    can tell the phases apart: a connection never made (unreachable: retried), a request sent
    but never answered (dropped: retried), and an answer, even one read after the server
    stopped reading the request (a 4xx: never retried).

    Args:
      url: server root, e.g. ``http://localhost:8501``.
      timeout: seconds for connecting and for reading each response.
      retries: extra attempts after an unreachable server, a dropped connection or an HTTP
        503/429.
      backoff: first delay in seconds; doubles each retry, capped at ``max_backoff``. A
        ``Retry-After`` header (seconds) replaces the delay when it is shorter than the cap.
    """

    def __init__(self, url: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.1,
                 max_backoff: float = 2.0, *, sleep: Callable[[float], None] = time.sleep):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"url must look like http://HOST:PORT, got {url!r}")
        try:
            parsed.port
        except ValueError:
            raise UserError(f"url must look like http://HOST:PORT, got {url!r} (bad port)"
                            ) from None
        _check_retry_args(timeout, retries, backoff)
        self.url = url.rstrip("/")
        self._parsed = parsed
        self.timeout = timeout
        self.delays = _backoff_delays(retries, backoff, max_backoff)
        self.max_backoff = max_backoff
        self._sleep = sleep

    def endpoint(self, model: str, version: int | None = None, label: str | None = None,
                 verb: str | None = "predict") -> str:
        """``{url}/v1/models/NAME[/versions/N|/labels/L][:verb]`` (no verb: model status)."""
        check_choice(version, label)
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return f"{self.url}{path}" + (f":{verb}" if verb else "")

    def answer(self, model: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
               label: str | None = None, *, signature: str = SIGNATURE) -> Answer:
        outputs = self.predict(model, inputs, version, label, signature=signature)
        if label is not None:
            version = self.label_version(model, label)
        return Answer(outputs, None if version is None else int(version))

    def label_version(self, model: str, label: str) -> int | None:
        """The version the server's model status gives for ``label`` (``GET .../labels/L``);
        None when the server cannot say (the answer it already gave stands)."""
        try:
            status = self._send(self.endpoint(model, label=label, verb=None), None,
                                model).get("model_version_status") or []
        except (ServingError, AttributeError):
            return None
        versions = [int(s["version"]) for s in status if str(s.get("version", "")).isdigit()]
        return versions[0] if len(versions) == 1 else None

    def latest_version(self, model: str) -> int | None:
        """The highest version the server's model status gives as AVAILABLE (``GET
        .../models/NAME``), what an unpinned request gets; None when it cannot say."""
        try:
            status = self._send(self.endpoint(model, verb=None), None,
                                model).get("model_version_status") or []
        except (ServingError, AttributeError):
            return None
        versions = [int(s["version"]) for s in status if str(s.get("version", "")).isdigit()
                    and s.get("state", "AVAILABLE") == "AVAILABLE"]
        return max(versions, default=None)

    def predict(self, model: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                label: str | None = None, *, signature: str = SIGNATURE
                ) -> dict[str, np.ndarray]:
        body = json.dumps({"signature_name": signature,
                           "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}})
        url = self.endpoint(model, version, label)
        payload = self._send(url, body.encode(), model)
        if not isinstance(payload, dict) or "outputs" not in payload:
            raise ServingError(f"response from {url} has no 'outputs' key: "
                               f"{str(payload)[:200]}", model=model)
        outputs = payload["outputs"]
        if not isinstance(outputs, dict):
            outputs = {UNNAMED_OUTPUT: outputs}
        return {name: _normalize(_from_json(value)) for name, value in outputs.items()}

    def _send(self, url: str, body: bytes | None, model: str) -> Any:
        """POSTs ``body`` (GETs when None) with retries; the decoded JSON answer."""
        for attempt in range(len(self.delays) + 1):
            last = attempt == len(self.delays)
            retry_after = None
            try:
                status, headers, data = self._post(url, body)
            except TimeoutError:
                raise ServingError(f"no answer from {url} within {self.timeout}s",
                                   model=model) from None
            except _Unreachable as err:
                if last:
                    raise ServingError(f"cannot reach {url} after {attempt + 1} attempts: "
                                       f"{err}", model=model) from None
            except _Dropped as err:
                if last:
                    raise ServingError(f"{url} closed the connection without answering, "
                                       f"{attempt + 1} times ({err}): the server is restarting, "
                                       f"or fails on this request", model=model) from None
            else:
                if status == 200:
                    try:
                        return json.loads(data)
                    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
                        raise ServingError(f"{url} answered with invalid JSON: {err}",
                                           model=model) from None
                if status not in _RETRY_HTTP_STATUS or last:
                    raise ServingError(f"HTTP {status} from {url}: {_error_text(data, status)}",
                                       status=status, model=model) from None
                retry_after = _retry_after(headers.get("Retry-After"))
            delay = self.delays[attempt]
            if retry_after is not None:
                delay = min(retry_after, self.max_backoff)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, url: str, body: bytes | None):
        """One POST (a GET when ``body`` is None) on a fresh connection:
        ``(status, headers, body)``.

        Raises `_Unreachable` (no connection: nothing was sent), `_Dropped` (the request went
        out and no answer came back) or `TimeoutError`. When sending fails because the server
        stopped reading (it may have rejected the request early), its answer is still read.
        """
        parsed, parts = self._parsed, urllib.parse.urlsplit(url)
        cls = (http.client.HTTPSConnection if parsed.scheme == "https"
               else http.client.HTTPConnection)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = cls(parsed.hostname, parsed.port, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except TimeoutError:
                raise
            except OSError as err:  # refused, no route, unknown host
                raise _Unreachable(getattr(err, "strerror", None) or str(err)) from None
            send_error = None
            try:
                if body is None:
                    conn.request("GET", path)
                else:
                    conn.request("POST", path, body, {"Content-Type": "application/json"})
            except TimeoutError:
                raise
            except OSError as err:  # broken pipe, reset: the server stopped reading
                send_error = err
            try:
                response = conn.getresponse()
            except TimeoutError:
                raise
            except (http.client.HTTPException, OSError) as err:
                reason = send_error or err
                raise _Dropped(f"{type(reason).__name__}: {reason}".rstrip(": ")) from None
            try:
                data = response.read()
            except http.client.IncompleteRead as err:
                if response.status == 200:
                    raise _Dropped(f"answer cut off after {len(err.partial)} bytes") from None
                data = err.partial  # an error answer, cut short: its status says enough
            except OSError as err:
                if response.status == 200:
                    raise _Dropped(f"{type(err).__name__}: {err}") from None
                data = b""
            return response.status, response.headers, data
        finally:
            conn.close()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Unreachable(Exception):
    """No connection to the server could be made."""


class _Dropped(Exception):
    """The request was sent (in part or whole) and the connection closed with no answer."""


def _error_text(data: bytes, status: int) -> str:
    """The server's ``{"error": "..."}`` text whole (TensorFlow noise trimmed), else the raw
    body (first 500 characters: e.g. a proxy's HTML page), else the HTTP reason."""
    raw = data.decode("utf-8", "replace")
    try:
        return tf_error_text(str(json.loads(raw)["error"]))
    except (ValueError, KeyError, TypeError):
        return raw.strip()[:500] or http.client.responses.get(status, "no message")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _from_json(value: Any) -> np.ndarray:
    """JSON nested lists -> array; ``{"b64": ...}`` (TF Serving's binary strings) -> bytes."""
    def unwrap(v):
        if isinstance(v, list):
            return [unwrap(x) for x in v]
        if isinstance(v, dict) and "b64" in v:
            return base64.b64decode(v["b64"])
        return v

    value = unwrap(value)
    if _is_string_tree(value):
        return np.array(value, dtype=object)
    return np.array(value)


def _is_string_tree(value: Any) -> bool:
    while isinstance(value, list):
        if not value:
            return False
        value = value[0]
    return isinstance(value, (str, bytes))


class GrpcBackend:
    """TF Serving gRPC API: ``PredictionService.Predict`` on ``host:port`` (default port 8500).

    Args:
      host_port: e.g. ``localhost:8500``.
      timeout: deadline in seconds for each call.
      retries: extra attempts after UNAVAILABLE (server down, restarting, or queue full).
      backoff, max_backoff: as for `RestBackend`.
      max_message_mb: largest response accepted; top-K outputs are small, but batch scoring
        with large B can exceed gRPC's 4 MB default.
    """

    def __init__(self, host_port: str, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.1, max_backoff: float = 2.0, max_message_mb: int = 64, *,
                 sleep: Callable[[float], None] = time.sleep):
        if ":" not in host_port or host_port.startswith(("http://", "https://")):
            raise UserError(f"grpc address must look like HOST:PORT, got {host_port!r}")
        _check_retry_args(timeout, retries, backoff)
        try:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc
        except ImportError as err:
            raise UserError(f"the gRPC backend needs grpcio and tensorflow-serving-api; "
                            f"{_SERVING_EXTRA_HINT} ({err})") from None
        self._grpc = grpc
        self.host_port = host_port
        self.timeout = timeout
        self.delays = _backoff_delays(retries, backoff, max_backoff)
        self._sleep = sleep
        size = max_message_mb * 1024 * 1024
        self._channel = grpc.insecure_channel(host_port, options=[
            ("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, model: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
                label: str | None = None, *, signature: str = SIGNATURE
                ) -> dict[str, np.ndarray]:
        return self.answer(model, inputs, version, label, signature=signature).outputs

    def answer(self, model: str, inputs: Mapping[str, np.ndarray], version: int | None = None,
               label: str | None = None, *, signature: str = SIGNATURE) -> Answer:
        """As `predict`; the version comes from the response's ``model_spec``."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        check_choice(version, label)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        elif label is not None:
            request.model_spec.version_label = label
        for name, value in inputs.items():
            value = np.asarray(value)
            if value.dtype.kind in "OU":
                value = value.astype(object)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(request, model)
        spec = response.model_spec
        answered = spec.version.value if spec.HasField("version") else version
        return Answer({name: _normalize(tf.make_ndarray(proto))
                       for name, proto in response.outputs.items()},
                      None if answered is None else int(answered))

    def _call(self, request, model: str):
        grpc = self._grpc
        for attempt in range(len(self.delays) + 1):
            try:
                return self._stub.Predict(request, timeout=self.timeout)
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < len(self.delays):
                    self._sleep(self.delays[attempt])
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    message = f"no answer from {self.host_port} within {self.timeout}s"
                else:
                    message = f"gRPC {code.name} from {self.host_port}: {err.details()}"
                raise ServingError(message, code=code.name, model=model) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
