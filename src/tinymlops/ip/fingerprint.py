"""Per-device fingerprints: a device-keyed +-1 LSB pattern in the int8 weights of each device's package.

For a device, HMAC-SHA256(owner fingerprint key, base sha256 / device id) seeds the choice of ``weights`` int8
weights (out of every constant int8 tensor of the TFLite file) and the direction of a one-LSB nudge. The file keeps
its size, graph, operators and tensor arena, so the profile figures do not change; the nudge moves a handful of
weights by one quantisation step, so accuracy barely does. At package time a device's pattern is redrawn (the redraw
index joins the HMAC message) until its copy answers the version's reference sample exactly like the base. Every
device's package is signed as usual.

Tracing a leaked file compares its int8 weights with the base file tensor by tensor (by name and shape, so a
re-serialised flatbuffer still traces) and scores each device of the sealed ledger by the fraction of its pattern
present in the leak. The ledger (device ids, base file digest) is sealed with the owner's IP key and logged on the
version's MLflow run; the key never leaves the owner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import ModelFormatError, UsageError
from tinymlops.ip import keys

SCHEME = "int8-lsb-v2"
LEDGER_DIR = "ip/fingerprints"
#: tensors smaller than this are left alone (per-channel scales, tiny heads)
MIN_TENSOR_WEIGHTS = 64
#: a device is named when at least this fraction of its pattern is in the leak and no other device comes close
MATCH_MIN = 0.8
#: redraws of a device's pattern tried until its copy answers the check inputs exactly like the base
MAX_ATTEMPTS = 16
#: share of the int8 weights, the quietest (see weight_activity), that fingerprint patterns are drawn from
QUIET_FRACTION = 0.25
#: check inputs used to measure the weights' activity
ACTIVITY_ROWS = 500
#: a copy is kept only if no check answer's top-1 margin is within this many times its largest output change
MARGIN_FACTOR = 2.0


@dataclass(frozen=True)
class Int8Tensor:
    """A constant int8 tensor of a TFLite file: where its bytes are, and its name and shape."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int
    subgraph: int = 0
    index: int = -1


def int8_tensors(model: bytes, where: str = "model") -> list[Int8Tensor]:
    """Return the constant int8 weight tensors of a TFLite flatbuffer (ModelFormatError if it is not one)."""
    from ai_edge_litert import schema_py_generated as schema

    if len(model) < 8 or model[4:8] != b"TFL3":
        raise ModelFormatError(f"{where}: not a TFLite flatbuffer (fingerprints need an int8 .tflite)")
    try:
        m = schema.Model.GetRootAs(model, 0)
        out: dict[int, Int8Tensor] = {}
        for si in range(m.SubgraphsLength()):
            sg = m.Subgraphs(si)
            for ti in range(sg.TensorsLength()):
                t = sg.Tensors(ti)
                if t.Type() != schema.TensorType.INT8 or t.Buffer() <= 0 or t.Buffer() in out:
                    continue
                buf = m.Buffers(t.Buffer())
                if buf is None or buf.DataLength() < MIN_TENSOR_WEIGHTS:
                    continue
                start = buf._tab.Vector(buf._tab.Offset(4))
                name = (t.Name() or b"").decode("utf-8", "replace")
                out[t.Buffer()] = Int8Tensor(name, tuple(int(d) for d in t.ShapeAsNumpy()), start, buf.DataLength(),
                                             si, ti)
    except (IndexError, ValueError, TypeError, AttributeError, struct.error) as exc:
        raise ModelFormatError(f"{where}: unreadable TFLite flatbuffer: {exc}") from None
    if not out:
        raise ModelFormatError(f"{where}: no int8 weight tensors (fingerprints need a full-integer int8 model)")
    return sorted(out.values(), key=lambda t: t.offset)


def _pool(model: bytes, tensors: list[Int8Tensor]) -> np.ndarray:
    """Return every int8 weight of the tensors, concatenated in file order."""
    return np.concatenate([np.frombuffer(model, np.int8, t.size, t.offset) for t in tensors])


def device_pattern(fp_key: bytes, base_sha256: str, device_id: str, pool: np.ndarray,
                   weights: int, attempt: int = 0, candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (positions in the pool, signed +-1 deltas) of a device's fingerprint (``attempt``: redraw index).

    ``candidates``: the pool positions a pattern may use (default: all), see :func:`quiet_candidates`.
    """
    seed = hmac.new(fp_key, f"{base_sha256}/{device_id}/{attempt}".encode(), hashlib.sha256).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "big"))
    if candidates is None:
        pos = np.sort(rng.choice(len(pool), size=min(weights, len(pool)), replace=False))
    else:
        pos = np.sort(rng.choice(candidates, size=min(weights, len(candidates)), replace=False))
    delta = rng.choice(np.array([-1, 1], dtype=np.int16), size=len(pos))
    values = pool[pos].astype(np.int16)
    delta = np.where((values + delta > 127) | (values + delta < -127), -delta, delta)  # stay in int8's symmetric range
    return pos, delta


def apply(model: bytes, fp_key: bytes, device_id: str, weights: int, attempt: int = 0,
          candidates: np.ndarray | None = None) -> bytes:
    """Return the device's fingerprinted copy of an int8 TFLite model (same size, graph and arena)."""
    tensors = int8_tensors(model)
    pool = _pool(model, tensors)
    pos, delta = device_pattern(fp_key, hashlib.sha256(model).hexdigest(), device_id, pool, weights, attempt,
                                candidates)
    marked = pool.astype(np.int16)
    marked[pos] += delta
    out = bytearray(model)
    i = 0
    for t in tensors:
        out[t.offset:t.offset + t.size] = marked[i:i + t.size].astype(np.int8).tobytes()
        i += t.size
    return bytes(out)


def weight_activity(model: bytes, inputs: np.ndarray, tensors: list[Int8Tensor]) -> np.ndarray | None:
    """Return, per pool weight, how much a one-LSB change of it moves its layer's output on ``inputs``.

    Changing int8 weight w[o, i] by one step moves the layer's accumulator for output o by exactly s_w[o] * a_i: the
    weight's scale times the (de-quantised) input it multiplies. A weight's activity is that, averaged over the
    inputs, relative to the layer's mean |output| so that layers compare. Weights of fully connected and
    (depthwise) convolution ops are measured; others get the median. None if nothing could be measured.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tinymlops.runtimes import dequantize, quantize

    it = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    m = schema.Model.GetRootAs(model, 0)
    sg = m.Subgraphs(0)
    users: dict[int, tuple[int, int, int]] = {}  # weight tensor -> (op code, input activation, output)
    for oi in range(sg.OperatorsLength()):
        op = sg.Operators(oi)
        oc = m.OperatorCodes(op.OpcodeIndex())
        code, ins, outs = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), op.InputsAsNumpy(), op.OutputsAsNumpy()
        for ti in ins[1:]:
            users.setdefault(int(ti), (code, int(ins[0]), int(outs[0])))
    ops = schema.BuiltinOperator
    measured = {t.index: users[t.index] for t in tensors
                if t.subgraph == 0 and users.get(t.index, (None,))[0] in (ops.FULLY_CONNECTED, ops.CONV_2D,
                                                                         ops.DEPTHWISE_CONV_2D)}
    if not measured:
        return None
    details = {d["index"]: d for d in it.get_tensor_details()}
    watched = {i for _, a, o in measured.values() for i in (a, o)}
    sums: dict[int, np.ndarray] = {}
    inp = it.get_input_details()[0]
    for x in inputs[:ACTIVITY_ROWS]:
        x = np.asarray(x, np.float32).reshape(inp["shape"])
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            x = quantize(x, scale, zp, inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        for i in watched:
            q = it.get_tensor(i)
            scale, zp = details[i]["quantization"]
            a = np.abs(dequantize(q, scale, zp) if scale else q.astype(np.float32))
            sums[i] = a if i not in sums else sums[i] + a
    parts = []
    for t in tensors:
        if t.index not in measured or t.subgraph != 0:
            parts.append(np.full(t.size, np.nan))
            continue
        code, act, out = measured[t.index]
        seen = sums[act] / min(len(inputs), ACTIVITY_ROWS)  # mean |input| per element of the input tensor
        # the input feature a weight multiplies is its last axis (a fully connected op flattens its input first);
        # a depthwise weight (1, kh, kw, cin * multiplier) takes channel k // multiplier
        n_in = seen.shape[-1] if code == ops.DEPTHWISE_CONV_2D else t.shape[-1]
        feature = seen.reshape(-1, n_in).mean(axis=0) if seen.size % n_in == 0 else np.full(n_in, seen.mean())
        if code == ops.DEPTHWISE_CONV_2D:
            feature = np.repeat(feature, max(1, t.shape[-1] // n_in))
        qp = details[t.index]["quantization_parameters"]
        scales = np.asarray(qp["scales"], np.float64).reshape(-1)
        bshape = [1] * len(t.shape)
        if len(scales) > 1:
            bshape[int(qp["quantized_dimension"])] = len(scales)
        if len(feature) != t.shape[-1]:  # an op laid out otherwise: the layer's mean input
            feature = np.full(t.shape[-1], feature.mean())
        level = float(sums[out].mean()) / min(len(inputs), ACTIVITY_ROWS) + 1e-12
        parts.append((scales.reshape(bshape) * feature.reshape([1] * (len(t.shape) - 1) + [-1])
                      * np.ones(t.shape)).reshape(-1) / level)
    activity = np.concatenate(parts)
    return np.where(np.isnan(activity), np.nanmedian(activity), activity)


def quiet_candidates(model: bytes, inputs: np.ndarray, weights: int) -> np.ndarray | None:
    """Return the pool positions of the quietest QUIET_FRACTION of weights (at least 64 per pattern weight)."""
    tensors = int8_tensors(model)
    activity = weight_activity(model, inputs, tensors)
    if activity is None:
        return None
    keep = min(len(activity), max(int(len(activity) * QUIET_FRACTION), 64 * weights))
    # ties (e.g. every weight on a dead input) are broken at random, not by file order
    shuffled = np.random.default_rng(int.from_bytes(hashlib.sha256(model).digest()[:8], "big")).permutation(
        len(activity))
    return np.sort(shuffled[np.argsort(activity[shuffled], kind="stable")[:keep]])


def _pack(positions: np.ndarray, n: int) -> str:
    mask = np.zeros(n, bool)
    mask[positions] = True
    return base64.b64encode(zlib.compress(np.packbits(mask).tobytes())).decode()


def _unpack(text: str | None, n: int) -> np.ndarray | None:
    if text is None:  # a ledger of scheme int8-lsb-v1: patterns drawn from every weight
        return None
    return np.flatnonzero(np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8))[:n])


def _aligned_pool(leaked: bytes, base_tensors: list[Int8Tensor], where: str) -> np.ndarray | None:
    """Return the leak's int8 weights in the base's tensor order (None if the two graphs do not correspond)."""
    leak = int8_tensors(leaked, where)
    by_key: dict[tuple[str, tuple[int, ...]], list[Int8Tensor]] = {}
    for t in leak:
        by_key.setdefault((t.name, t.shape), []).append(t)
    parts = []
    for t in base_tensors:
        same = by_key.get((t.name, t.shape))
        if not same or same[0].size != t.size:
            return None
        parts.append(np.frombuffer(leaked, np.int8, t.size, same.pop(0).offset))
    return np.concatenate(parts)


@dataclass
class Trace:
    """Who a leaked file came from: the best-matching device and the scores behind it."""

    leaked: str
    model_name: str
    device_id: str | None
    version: str | None = None
    target: str | None = None
    score: float = 0.0
    runner_up: str | None = None
    runner_up_score: float = 0.0
    devices_checked: int = 0
    weights_changed: int = 0
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = dict(sorted(self.scores.items(), key=lambda kv: -kv[1])[:10])
        return d


def score_devices(leaked_pool: np.ndarray, base_pool: np.ndarray, fp_key: bytes, base_sha256: str,
                  devices: dict[str, int], weights: int, candidates: np.ndarray | None = None) -> dict[str, float]:
    """Return, per device (id -> the attempt its pattern was drawn at), the share of its pattern in the leak."""
    diff = leaked_pool.astype(np.int16) - base_pool.astype(np.int16)
    scores = {}
    for did, attempt in devices.items():
        pos, delta = device_pattern(fp_key, base_sha256, did, base_pool, weights, attempt, candidates)
        scores[did] = float(np.mean(diff[pos] == delta))
    return scores


# ---- package time and the sealed ledger -------------------------------------------------------------------------


def fingerprint_key(model_name: str, secret: bytes | None = None) -> bytes:
    """Return the fingerprint key of a model (derived from the owner's IP secret)."""
    return keys.derive(secret if secret is not None else keys.owner_secret(), f"fingerprint/{model_name}")


def change(base_out: np.ndarray, out: np.ndarray) -> tuple[int, int, float]:
    """Return how a copy's outputs differ from the base's on the check inputs: (flipped top-1 answers, answers
    near a flip, change bound).

    The change bound is the largest output change over the check inputs; an answer is near a flip when its top-1
    margin in the copy is at most MARGIN_FACTOR times that bound (a copy that changes nothing has none).
    """
    flips = int(np.count_nonzero(out.argmax(axis=1) != base_out.argmax(axis=1)))
    bound = float(np.abs(out - base_out).max()) if out.size else 0.0
    top2 = np.sort(out, axis=1)[:, -2:]
    near = int(np.count_nonzero(top2[:, 1] - top2[:, 0] <= MARGIN_FACTOR * bound)) if bound > 0 else 0
    return flips, near, bound


def choose_attempt(base: bytes, fp_key: bytes, device_id: str, weights: int,
                   predict: Callable[[bytes], np.ndarray] | None, base_out: np.ndarray | None,
                   candidates: np.ndarray | None = None) -> int:
    """Return the first redraw whose copy flips no check answer and brings none near a flip (else the least bad)."""
    if predict is None or base_out is None:
        return 0
    best, best_change = 0, None
    for attempt in range(MAX_ATTEMPTS):
        c = change(base_out, predict(apply(base, fp_key, device_id, weights, attempt, candidates)))
        if c[:2] == (0, 0):
            return attempt
        if best_change is None or c < best_change:
            best, best_change = attempt, c
    return best


def fingerprint_bundles(bundle: Any, device_ids: list[str], weights: int, secret: bytes | None = None,
                        check_inputs: np.ndarray | None = None
                        ) -> tuple[dict[str, Any], dict[str, int], np.ndarray | None]:
    """Return a signed, device-fingerprinted copy of a package bundle per device, each device's redraw, and the
    pool positions patterns were drawn from (None: every weight).

    With ``check_inputs`` (model inputs), patterns use only the quietest weights on them (quiet_candidates) and each
    device's pattern is redrawn until its copy flips no check answer and brings none near a flip (``change``).
    """
    from tinymlops.fleet import packages

    manifest = bundle.manifest
    if manifest.get("encryption"):
        raise UsageError("fingerprint the plaintext package, then encrypt per device (encrypted bundle given)")
    if manifest.get("format") != "tflite":
        raise UsageError(f"{manifest.get('model_name')} v{manifest.get('model_version')}: fingerprints need an int8 "
                         f".tflite package, got format {manifest.get('format')!r}")
    key = fingerprint_key(manifest["model_name"], secret)
    predict = None if check_inputs is None else _predictor(check_inputs)
    base_out = None if predict is None else predict(bundle.artifact)
    quiet = None if check_inputs is None else quiet_candidates(bundle.artifact, check_inputs, weights)
    attempts = {d: choose_attempt(bundle.artifact, key, d, weights, predict, base_out, quiet) for d in device_ids}
    base = {k: v for k, v in manifest.items() if k not in ("key_id", "sha256", "size_bytes")}
    return ({d: packages.sign(base, apply(bundle.artifact, key, d, weights, attempts[d], quiet))
             for d in device_ids}, attempts, quiet)


def _predictor(inputs: np.ndarray) -> Callable[[bytes], np.ndarray]:
    """Return model bytes -> its outputs on ``inputs`` (the TFLite runtime, through a temporary file)."""
    from tinymlops.runtimes import open_runner

    def predict(model: bytes) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="tinymlops-fp-") as tmp:
            path = Path(tmp) / "model.tflite"
            path.write_bytes(model)
            with open_runner(path) as runner:
                return np.asarray(runner.predict(inputs))

    return predict


def check_inputs_of(model_name: str, version: str, rows: int = 2000) -> np.ndarray | None:
    """Return the model inputs of the version's reference sample (logged by the train stage), if any."""
    import pandas as pd

    from tinymlops import registry

    mv = registry.get_version(model_name, version)
    try:
        path = registry.download(mv.tags.get("train_run_id") or mv.run_id, "reference/sample.csv")
    except Exception:  # a version without a reference sample is fingerprinted without the check
        return None
    df = pd.read_csv(path).drop(columns=["label"], errors="ignore")
    return df.to_numpy(dtype=np.float32)[:rows]


def record_ledger(model_name: str, version: str, target: str, base: bytes, devices: dict[str, int],
                  weights: int, candidates: np.ndarray | None = None) -> None:
    """Seal which devices got fingerprinted copies of which base file; log it on the version's run."""
    from tinymlops import registry

    ledger = {"scheme": SCHEME, "model_name": model_name, "version": str(version), "target": target,
              "base_sha256": hashlib.sha256(base).hexdigest(), "weights": weights, "devices": devices,
              "created_unix_s": time.time()}
    if candidates is not None:
        ledger["candidates"] = _pack(candidates, len(_pool(base, int8_tensors(base))))
    mv = registry.get_version(model_name, version)
    with tempfile.TemporaryDirectory(prefix="tinymlops-ip-") as tmp:
        path = Path(tmp) / f"{target}-{uuid.uuid4().hex[:12]}.sealed.json"
        path.write_bytes(keys.seal(ledger, "fingerprint-ledger", model_name))
        registry.log_artifact(mv.run_id, path, LEDGER_DIR)
    registry.set_version_tags(model_name, version, {"ip.fingerprint": SCHEME})


def _ledgers(model_name: str) -> list[tuple[dict[str, Any], bytes]]:
    """Return every sealed ledger of a model with the base file it was made from."""
    from tinymlops import registry

    found = []
    for v in registry.list_versions(model_name):
        if "ip.fingerprint" not in v.tags:
            continue
        directory = registry.download(v.run_id, LEDGER_DIR)
        pkg = registry.download_package(model_name, v.version)
        base = (pkg / str(registry.read_manifest(pkg)["file"])).read_bytes()
        for f in sorted(directory.glob("*.sealed.json")):
            ledger = keys.unseal(f.read_bytes(), "fingerprint-ledger", model_name, where=f"ledger {f.name}")
            if ledger["base_sha256"] == hashlib.sha256(base).hexdigest():
                found.append((ledger, base))
    return found


def trace(leaked_path: str | Path, model_name: str, secret: bytes | None = None) -> Trace:
    """Name the device a leaked model file came from (device_id None when no fingerprinted device matches)."""
    p = Path(leaked_path)
    if p.is_dir():
        mf = p / "manifest.json"
        try:
            p = p / str(json.loads(mf.read_text(encoding="utf-8"))["file"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelFormatError(f"{leaked_path}: a directory without a readable package manifest") from None
    if not p.is_file():
        raise ModelFormatError(f"{p}: leaked model file not found")
    leaked = p.read_bytes()
    int8_tensors(leaked, str(p))  # a clear error for a file that cannot carry a fingerprint
    ledgers = _ledgers(model_name)
    if not ledgers:
        raise UsageError(f"{model_name}: no fingerprinted packages recorded (tinymlops ip fingerprint first)")
    key = fingerprint_key(model_name, secret)
    best = Trace(str(leaked_path), model_name, None, reason="no fingerprinted base matches the leaked graph")
    for ledger, base in ledgers:
        base_tensors = int8_tensors(base)
        leak_pool = _aligned_pool(leaked, base_tensors, str(p))
        if leak_pool is None:
            continue
        base_pool = _pool(base, base_tensors)
        scores = score_devices(leak_pool, base_pool, key, ledger["base_sha256"],
                               {str(d): int(a) for d, a in dict(ledger["devices"]).items()}, int(ledger["weights"]),
                               _unpack(ledger.get("candidates"), len(base_pool)))
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        top, top_score = ranked[0]
        if top_score < best.score and best.version is not None:
            continue
        changed = int(np.count_nonzero(leak_pool != base_pool))
        second = ranked[1] if len(ranked) > 1 else (None, 0.0)
        named = top_score >= MATCH_MIN and top_score - second[1] >= 0.5
        best = Trace(str(leaked_path), model_name, top if named else None, ledger["version"], ledger["target"],
                     top_score, second[0], second[1], len(scores), changed,
                     "" if named else ("the leak is the unmarked base file" if changed == 0 else
                                       "no device's pattern is in the leak (altered, or not from this fleet)"),
                     scores)
    return best


def publish_fingerprinted(st: Any, model_name: str, version: str, target: str, cohort: str,
                          weights: int = 48, targets_dir: Any = None) -> dict[str, str]:
    """Give every device of a cohort its own signed, fingerprinted package and make it the device's desired one.

    The ledger is sealed and logged before any device is pointed at its package. Returns device id -> package id.
    """
    from tinymlops.fleet import packages
    from tinymlops.fleet.store import list_devices, set_desired
    from tinymlops.rollout.publish import store_bundles

    devices = [d.id for d in list_devices(st, cohort=cohort, target=target)]
    if not devices:
        raise UsageError(f"cohort {cohort!r} has no {target} devices to fingerprint packages for")
    base = packages.build_package(model_name, version, target, targets=targets_dir)
    bundles, attempts, quiet = fingerprint_bundles(base, devices, weights,
                                                   check_inputs=check_inputs_of(model_name, version))
    record_ledger(model_name, version, target, base.artifact, attempts, weights, quiet)
    store_bundles(st, list(bundles.values()), model_name, version, target)
    for d, b in bundles.items():
        set_desired(st, b.id, device_ids=[d], reason=f"fingerprinted package of cohort {cohort}")
    return {d: b.id for d, b in bundles.items()}
