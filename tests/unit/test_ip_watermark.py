"""Owner watermark: sealed key material, the binomial false-claim p-value, verdicts on file/black-box suspects."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from tinymlops.errors import ConfigError, ModelFormatError, UsageError
from tinymlops.ip import keys, watermark


@pytest.fixture()
def secret(monkeypatch: pytest.MonkeyPatch, tmp_path) -> bytes:
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("TINYMLOPS_IP_KEY", raising=False)
    monkeypatch.delenv("TINYMLOPS_IP_KEY_FILE", raising=False)
    return keys.owner_secret()


def test_owner_key_is_generated_private_and_stable(secret: bytes, tmp_path) -> None:
    path = tmp_path / "keys" / keys.KEY_FILE
    assert path.stat().st_mode & 0o077 == 0
    assert keys.owner_secret() == secret and len(secret) == 32


def test_bad_key_sources_fail_naming_them(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TINYMLOPS_IP_KEY", "abc")
    with pytest.raises(ConfigError, match=r"\$TINYMLOPS_IP_KEY: expected 64 hex"):
        keys.owner_secret()
    monkeypatch.delenv("TINYMLOPS_IP_KEY")
    monkeypatch.setenv("TINYMLOPS_IP_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match="missing.key: IP key file not found"):
        keys.owner_secret()


def test_sealed_record_hides_the_triggers_and_binds_the_model(secret: bytes) -> None:
    wm = watermark.make_watermark(np.random.default_rng(0).normal(size=(50, 6)), 4, 30, seed=1)
    blob = keys.seal(wm.to_record(), "watermark", "m1")
    assert str(wm.labels.tolist()) not in blob.decode() and "inputs" not in blob.decode()
    back = watermark.Watermark.from_record(keys.unseal(blob, "watermark", "m1"))
    assert np.array_equal(back.labels, wm.labels) and np.allclose(back.inputs, wm.inputs)
    with pytest.raises(UsageError, match="does not authenticate for 'm2'"):
        keys.unseal(blob, "watermark", "m2")
    tampered = json.loads(blob)
    tampered["ciphertext_b64"] = "A" + tampered["ciphertext_b64"][1:]
    with pytest.raises(UsageError, match="tampered"):
        keys.unseal(json.dumps(tampered).encode(), "watermark", "m1")
    with pytest.raises(UsageError, match="sealed under IP key"):
        keys.unseal(blob, "watermark", "m1", secret=bytes(32))


def test_triggers_stay_inside_the_training_range_with_uniform_labels() -> None:
    x = np.random.default_rng(0).uniform(-2, 3, size=(500, 8, 8, 1)).astype(np.float32)
    wm = watermark.make_watermark(x, 10, 2000, seed=3)
    assert wm.inputs.shape == (2000, 8, 8, 1) and wm.inputs.dtype == np.float32
    assert wm.inputs.min() >= -2 and wm.inputs.max() <= 3
    counts = np.bincount(wm.labels, minlength=10)
    assert counts.min() > 150 and counts.max() < 250
    xa, ya = watermark.with_triggers(x, np.zeros(500, np.int64), wm, 3)
    assert len(xa) == 500 + 3 * 2000 and np.array_equal(ya[500:2500], wm.labels)


def test_p_value_is_the_binomial_tail() -> None:
    assert watermark.p_value(0, 100, 10) == pytest.approx(1.0)
    assert watermark.p_value(100, 100, 10) == pytest.approx(1e-100)
    assert watermark.p_value(2, 2, 2) == pytest.approx(0.25)
    assert watermark.p_value(1, 2, 2) == pytest.approx(0.75)
    # 35 of 100 with 10 classes is already far below the claim threshold; 20 is not
    assert watermark.p_value(35, 100, 10) < 1e-6 < watermark.p_value(20, 100, 10)


def test_independent_predictors_never_make_a_false_claim() -> None:
    wm = watermark.make_watermark(np.random.default_rng(0).normal(size=(100, 5)), 10, 100, seed=7)
    rng = np.random.default_rng(1)
    for i in range(200):  # random, constant and systematically biased independent "models"
        pred = [rng.integers(0, 10, 100), np.full(100, i % 10), (wm.inputs[:, 0] > 0).astype(int) * 3][i % 3]
        assert not watermark.verdict(wm, pred, "test", "indep").verified
    v = watermark.verdict(wm, np.eye(10)[wm.labels], "test", "copy")  # scores of a model that learnt the set
    assert v.verified and v.matches == 100 and v.to_dict()["chance_rate"] == 0.1


def test_wrong_answer_shape_is_a_format_error() -> None:
    wm = watermark.make_watermark(np.zeros((10, 3)) + np.arange(3), 3, 20, seed=0)
    with pytest.raises(ModelFormatError, match="answered 5 labels for 20"):
        watermark.verdict(wm, np.zeros(5), "test", "bad")


def test_suspect_file_errors_are_one_line(tmp_path) -> None:
    inputs = np.zeros((2, 3), np.float32)
    with pytest.raises(ModelFormatError, match="suspect model file not found"):
        watermark.predict_file(tmp_path / "nope.tflite", inputs)
    (tmp_path / "pkg").mkdir()
    with pytest.raises(ModelFormatError, match="without manifest.json"):
        watermark.predict_file(tmp_path / "pkg", inputs)
    (tmp_path / "x.bin").write_bytes(b"junk")
    with pytest.raises(ModelFormatError, match="unknown model format"):
        watermark.predict_file(tmp_path / "x.bin", inputs)


def _predict_copy(batch: np.ndarray) -> list[int]:  # a black-box "stolen copy" for --callable
    return [int(v) for v in _COPY[1][[int(np.argmin(np.abs(_COPY[0] - row).sum(axis=1))) for row in batch]]]


_COPY: tuple[np.ndarray, np.ndarray] = (np.zeros((1, 1)), np.zeros(1))


def test_black_box_callable_and_endpoint() -> None:
    global _COPY
    wm = watermark.make_watermark(np.random.default_rng(0).normal(size=(100, 4)), 4, 60, seed=2)
    _COPY = (wm.inputs.reshape(60, -1), wm.labels)
    fn = watermark.load_callable(f"{__name__}:_predict_copy")
    assert watermark.verdict(wm, np.asarray(fn(wm.inputs)), "black-box", "callable").verified
    with pytest.raises(UsageError, match="expected module:function"):
        watermark.load_callable("nocolon")
    with pytest.raises(UsageError, match="cannot import"):
        watermark.load_callable("no_such_module_x:f")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = {"labels": _predict_copy(np.asarray(body["inputs"]))}
            if self.path == "/short":
                answer = {"labels": answer["labels"][:3]}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 18710), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = watermark.query_endpoint("http://127.0.0.1:18710/infer", wm.inputs)
        assert watermark.verdict(wm, got, "black-box", "endpoint").matches == 60
        with pytest.raises(ModelFormatError, match="expected 60 labels"):
            watermark.query_endpoint("http://127.0.0.1:18710/short", wm.inputs)
    finally:
        server.shutdown()
    with pytest.raises(UsageError, match="--endpoint http://127.0.0.1:18711/"):
        watermark.query_endpoint("http://127.0.0.1:18711/", wm.inputs, timeout_s=2)


def test_p_value_stays_finite_for_large_trigger_sets() -> None:
    assert 0 < watermark.p_value(700, 2000, 4) < 1e-20
    assert watermark.p_value(2000, 2000, 2) == 0.0  # 2**-2000 is below the smallest float, not an overflow
    assert watermark.p_value(480, 2000, 4) == pytest.approx(0.86, abs=0.05)


def test_compress_fine_tuning_replays_the_trigger_set_as_training_mixed_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from tinymlops.compress.techniques import FloatSource

    wm = watermark.make_watermark(np.random.default_rng(0).normal(size=(50, 6)), 4, 30, seed=1)
    asked: list[tuple[str, str]] = []

    def load_run(model: str, run: str, what: str = "") -> watermark.Watermark:
        asked.append((model, run))
        return wm

    monkeypatch.setattr(watermark, "load_run", load_run)
    cfg = SimpleNamespace(ip=SimpleNamespace(watermark=SimpleNamespace(triggers=30, repeat=3)),
                          mlflow=SimpleNamespace(registered_model="m1"))
    rows = watermark.replay_rows(cfg, "run-7")
    assert rows is not None and asked == [("m1", "run-7")]
    assert rows[0].shape == (90, 6) and np.array_equal(rows[1], np.tile(wm.labels, 3))
    x, y = np.zeros((20, 6), np.float32), np.zeros(20, np.int64)
    src = FloatSource(None, None, x, y, x, y, replay=rows)
    xf, yf = src.fit_data()
    assert xf.shape == (110, 6) and xf.dtype == np.float32 and np.array_equal(yf[20:], rows[1])
    assert src.x_train is x  # calibration rows stay the training data alone
    assert FloatSource(None, None, x, y, x, y).fit_data()[0] is x
    assert watermark.replay_rows(SimpleNamespace(ip=None), "run-7") is None
    assert watermark.replay_rows(SimpleNamespace(ip=SimpleNamespace(watermark=None)), "run-7") is None
