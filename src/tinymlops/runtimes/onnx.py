"""onnxruntime adapter.

Its session is configured for the small models a device serves (``benchmarks/agent_rss.py --breakdown`` measures
each option): one intra-op thread and no spinning (a device's other work keeps its cores; for a model of a few
layers a thread pool's hand-offs cost more than they save), and neither the CPU memory arena nor memory patterns:
the arena keeps what it grew to (in power-of-two steps) for the session's life, and for tiny models plain
allocation was as fast (image, ONNX demo model: 8.2 vs 10.1 us per inference, 0.1-0.2 MB less). The graph
optimisations stay on (off saved 0.3 MB but cost 10-15 % latency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinymlops.errors import ModelFormatError
from tinymlops.runtimes import Runner


class OnnxRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFormatError(f"{path}: onnxruntime cannot load this model: {exc}") from None
        inp = self._sess.get_inputs()[0]
        self._name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        out = self._sess.run(None, {self._name: x.reshape(self.input_shape)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Run a batch in one call when the model has a dynamic batch dimension."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) and not isinstance(self._sess.get_inputs()[0].shape[0], int):
            out = self._sess.run(None, {self._name: X.reshape((len(X), *self.input_shape[1:]))})[0]
            return np.asarray(out, dtype=np.float32).reshape(len(X), -1)
        return super().predict(X)
