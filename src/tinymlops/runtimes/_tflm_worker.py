"""Worker process for the TFLM adapter: ``python -m tinymlops.runtimes._tflm_worker MODEL ARENA_BYTES``.

Protocol: one JSON header line on stdout, then for each float32 .npy batch read from stdin, two .npy arrays
written back (outputs float32, latencies ms float64). Anything the C++ runtime prints goes to stderr.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def send_array(stream, arr: np.ndarray) -> None:
    """Write one length-prefixed .npy frame."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    stream.write(struct.pack("<Q", len(data)) + data)


def recv_array(stream) -> np.ndarray:
    """Read one length-prefixed .npy frame; EOFError at end of stream."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return np.load(io.BytesIO(data), allow_pickle=False)


def _capture_fd2(fn) -> str:
    """Run fn with the process's fd 2 redirected to a temp file and return what was written there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def _q(x, details):
    qp = details["quantization_parameters"]
    dtype = details["dtype"]
    if dtype == np.float32 or not len(qp["scales"]):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / qp["scales"][0]) + qp["zero_points"][0], info.min, info.max).astype(dtype)


def _dq(y, details):
    qp = details["quantization_parameters"]
    if details["dtype"] == np.float32 or not len(qp["scales"]):
        return y.astype(np.float32)
    return ((y.astype(np.float32) - qp["zero_points"][0]) * qp["scales"][0]).astype(np.float32)


def main() -> None:
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # C++ prints must never corrupt the protocol stream
    path, arena = sys.argv[1], int(sys.argv[2])
    try:
        from tflite_micro.python.tflite_micro import runtime

        interp = runtime.Interpreter.from_bytes(Path(path).read_bytes(), arena_size=arena)
        text = _capture_fd2(interp.print_allocations)
        m = re.search(r"Arena allocation total (\d+) bytes", text)
        in_d, out_d = interp.get_input_details(0), interp.get_output_details(0)
        header = {"ok": True, "arena_bytes": int(m.group(1)) if m else -1, "allocations": text,
                  "input_dtype": np.dtype(in_d["dtype"]).name}
    except Exception as exc:  # report any load failure as data; the parent raises a clear error
        proto.write((json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        proto.flush()
        return
    proto.write((json.dumps(header) + "\n").encode())
    proto.flush()
    stdin = sys.stdin.buffer
    in_shape = tuple(int(d) for d in in_d["shape"])
    while True:
        try:
            X = recv_array(stdin)
        except EOFError:
            return
        outs, lats = [], []
        for x in X:
            interp.set_input(_q(x.reshape(in_shape), in_d), 0)
            t0 = time.perf_counter()
            interp.invoke()
            lats.append((time.perf_counter() - t0) * 1000.0)
            outs.append(_dq(interp.get_output(0), out_d).reshape(-1))
        send_array(proto, np.stack(outs) if outs else np.zeros((0, 0), np.float32))
        send_array(proto, np.asarray(lats, dtype=np.float64))
        proto.flush()


if __name__ == "__main__":
    main()
