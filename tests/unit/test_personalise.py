"""On-device personalisation: the choice between calibration and head, and the agent's state around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tinymlops.fleet.agent_personal import DevicePersonaliser
from tinymlops.personalise import Moments, PersonalFigures, Personalisation, fit

RNG = np.random.default_rng(0)
MEANS = RNG.normal(0, 1.6, size=(4, 6)) + 3.0  # four classes in six features, away from zero


def draw(n: int, seed: int, weights: tuple[float, ...] = (0.25,) * 4, gain: float = 1.0,
         offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=n, p=weights)
    x = MEANS[y] + rng.normal(0, 1.0, size=(n, 6))
    return x * gain + offset, y


X_REF, Y_REF = draw(4000, 1)
MODEL = LogisticRegression(max_iter=1000).fit(X_REF, Y_REF)
REF_MEAN, REF_STD = X_REF.mean(axis=0), X_REF.std(axis=0, ddof=1)


def predict(x: np.ndarray) -> np.ndarray:
    return np.asarray(MODEL.predict_proba(np.asarray(x, dtype=np.float64)))


def accuracy(p: Personalisation, x: np.ndarray, y: np.ndarray) -> float:
    return float((p.outputs(predict(p.features(x))).argmax(axis=1) == y).mean())


def moments_of(x: np.ndarray) -> Moments:
    m = Moments()
    for row in x:
        m.add(row)
    return m


def test_moments_match_numpy_and_skip_nonfinite() -> None:
    x, _ = draw(300, 2)
    m = moments_of(x)
    m.add(np.full(6, np.nan))
    assert m.n == 300
    assert np.allclose(m.mean, x.mean(axis=0)) and np.allclose(m.std, x.std(axis=0, ddof=1))  # type: ignore[arg-type]


@pytest.mark.parametrize(("gain", "offset"), [(1.3, 0.0), (0.8, 0.0), (1.0, 1.5)])
def test_a_sensor_shift_is_undone_by_calibration_with_50_labels(gain: float, offset: float) -> None:
    unlabelled, _ = draw(500, 3, gain=gain, offset=offset)
    xl, yl = draw(50, 4, gain=gain, offset=offset)
    xt, yt = draw(2000, 5, gain=gain, offset=offset)
    chosen = fit(xl, yl, predict, moments_of(unlabelled), REF_MEAN, REF_STD)
    assert chosen.kind.startswith("calibration")
    undrifted = accuracy(Personalisation(), *draw(2000, 5))
    before, after = accuracy(Personalisation(), xt, yt), accuracy(chosen, xt, yt)
    assert after > before + 0.02
    assert after >= undrifted - 0.02


def test_a_class_mix_change_is_not_calibrated_away() -> None:
    """The moments move with the class mix too; the labels show calibration would hurt, so it is not used."""
    weights = (0.85, 0.05, 0.05, 0.05)
    unlabelled, _ = draw(500, 6, weights)
    xl, yl = draw(50, 7, weights)
    xt, yt = draw(2000, 8, weights)
    chosen = fit(xl, yl, predict, moments_of(unlabelled), REF_MEAN, REF_STD)
    assert chosen.cv_loss["calibration"] > chosen.cv_loss["none"]
    assert chosen.kind in ("none", "head")
    assert accuracy(chosen, xt, yt) >= accuracy(Personalisation(), xt, yt) - 0.01


def test_an_undrifted_device_keeps_the_fleet_model() -> None:
    unlabelled, _ = draw(500, 9)
    xl, yl = draw(50, 10)
    chosen = fit(xl, yl, predict, moments_of(unlabelled), REF_MEAN, REF_STD)
    assert chosen.kind == "none" and chosen.scale is None and chosen.weight is None


def test_saved_personalisation_round_trips_and_refuses_other_shapes() -> None:
    p = fit(*draw(50, 11, gain=1.4), predict, moments_of(draw(500, 12, gain=1.4)[0]), REF_MEAN, REF_STD)
    again = Personalisation.from_json(json.loads(json.dumps(p.to_json())), 6, 4)
    x, _ = draw(20, 13, gain=1.4)
    assert np.allclose(again.outputs(predict(again.features(x))), p.outputs(predict(p.features(x))))
    with pytest.raises(ValueError, match="shape"):
        Personalisation.from_json(p.to_json(), 7, 4)
    with pytest.raises(ValueError, match="kind"):
        Personalisation.from_json({"kind": "everything"}, 6, 4)


def test_figures_are_counts_that_add_up() -> None:
    PersonalFigures(kind="head", labelled=50, evaluated=10, correct_base=7, correct_personal=9)
    with pytest.raises(ValueError, match="more correct"):
        PersonalFigures(kind="head", labelled=50, evaluated=3, correct_base=4, correct_personal=1)


class Runner:
    """A model as the agent sees one: batch ``predict`` and per-sample ``timed_predict``."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return predict(x)

    def timed_predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        return predict(np.asarray(x)[None])[0], 1.0


def manifest(classes: list[str] | None = None) -> dict[str, object]:
    feats = [{"name": f"f{i}", "mean": float(REF_MEAN[i]), "std": float(REF_STD[i])} for i in range(6)]
    return {"reference": {"features": feats}, "class_names": classes or ["a", "b", "c", "d"]}


def serve(dev: DevicePersonaliser, runner: object, x: np.ndarray, y: np.ndarray) -> int:
    correct = 0
    for row, label in zip(x, y, strict=True):
        out, _ = runner.timed_predict(row)  # type: ignore[attr-defined]
        dev.observe(row, np.asarray(out), int(label))
        correct += int(np.argmax(out) == label)
    return correct


def test_device_personalises_keeps_it_across_restarts_and_drops_it_for_other_classes(tmp_path: Path) -> None:
    dev = DevicePersonaliser(tmp_path, enabled=True)
    runner = dev.wrap(Runner(), manifest())
    x, y = draw(600, 14, gain=1.3)
    serve(dev, runner, x[:300], y[:300])
    assert dev.current.kind.startswith("calibration")
    figures = dev.figures()
    assert figures is not None and figures.evaluated > 0 and figures.correct_personal > figures.correct_base
    assert dev.figures().evaluated == 0  # type: ignore[union-attr]  # counts start again each window
    saved = json.loads((tmp_path / "personal.json").read_text())
    assert oct((tmp_path / "personal.json").stat().st_mode & 0o777) == "0o600"
    assert saved["key"]["class_names"] == ["a", "b", "c", "d"]
    # a restart (or an update with the same features and classes) serves the saved personalisation at once
    again = DevicePersonaliser(tmp_path, enabled=True)
    runner2 = again.wrap(Runner(), manifest())
    assert again.current.kind == dev.current.kind
    assert serve(again, runner2, x[300:], y[300:]) > 0.9 * 300
    # a model with other classes starts afresh
    other = DevicePersonaliser(tmp_path, enabled=True)
    other.wrap(Runner(), manifest(["w", "x", "y", "z"]))
    assert other.current.kind == "none"


def test_disabled_personalisation_changes_nothing_and_switching_off_serves_the_fleet_model(tmp_path: Path) -> None:
    dev = DevicePersonaliser(tmp_path, enabled=False)
    runner = dev.wrap(Runner(), manifest())
    x, y = draw(400, 15, gain=1.3)
    serve(dev, runner, x, y)
    assert dev.figures() is None and not (tmp_path / "personal.json").exists() and dev.current.kind == "none"
    dev.enabled = True  # the cohort's switch turned on
    serve(dev, runner, x, y)
    assert dev.current.kind != "none"
    dev.enabled = False  # ... and off again: the fleet's model as it is, what was learnt kept
    assert np.array_equal(runner.timed_predict(x[0])[0], predict(x[:1])[0])  # type: ignore[attr-defined]
    assert dev.current.kind != "none" and (tmp_path / "personal.json").exists()


def test_cohort_switch_reaches_the_desired_state_and_needs_a_deploy_token(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tinymlops.fleet import service, store

    st = store.open_store(f"sqlite:///{tmp_path / 'f.db'}")
    deploy = service.create_operator_token(st, name="ci", role="deploy")
    reader = service.create_operator_token(st, name="reader", role="read")
    h = {"Authorization": f"Bearer {deploy}"}
    with TestClient(service.create_app(st=st)) as c:
        toks = c.post("/v1/enrolment-tokens", json={"cohort": "line-b", "count": 2}, headers=h).json()["tokens"]
        other = c.post("/v1/enrolment-tokens", json={"cohort": "line-a", "count": 1}, headers=h).json()["tokens"]
        cred = {did: c.post("/v1/enrol", json={"enrolment_token": t, "device_id": did, "target": "gw"}
                            ).json()["credential"] for did, t in (("b1", toks[0]), ("a1", other[0]))}

        def desired(did: str) -> bool:
            r = c.get(f"/v1/devices/{did}/desired-state", headers={"Authorization": f"Bearer {cred[did]}"})
            return bool(r.json()["personalise"])

        assert not desired("b1")
        url = "/v1/cohorts/line-b/personalise"
        assert c.put(url, json={"enabled": True}, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        assert c.put("/v1/cohorts/bad name/personalise", json={"enabled": True}, headers=h).status_code == 422
        r = c.put(url, json={"enabled": True, "reason": "drift verdict"}, headers=h)
        assert r.status_code == 200 and r.json()["devices"] == 1 and r.json()["enabled"]
        assert desired("b1") and not desired("a1")
        # a device enrolling into the cohort later is switched on too
        cred["b2"] = c.post("/v1/enrol", json={"enrolment_token": toks[1], "device_id": "b2", "target": "gw"}
                            ).json()["credential"]
        assert desired("b2")
        assert c.get("/v1/cohorts/personalise", headers=h).json()[0]["cohort"] == "line-b"
        c.put(url, json={"enabled": False}, headers=h)
        assert not desired("b1")


def test_damaged_state_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "personal.json").write_text('{"key": {"feature_names": ["f0"], "class_names": ["a"]}, "perso')
    dev = DevicePersonaliser(tmp_path, enabled=True)
    dev.wrap(Runner(), manifest())
    assert dev.current.kind == "none"


@pytest.mark.parametrize("standardized", [True, False])
def test_calibration_folds_into_the_preprocessing_for_microcontrollers(standardized: bool) -> None:
    from tinymlops import preprocessing
    from tinymlops.personalise import fold_calibration
    from tinymlops.preprocessing.config import PreprocessingSection

    raw = np.random.default_rng(3).normal(2.0, 1.5, size=(200, 16, 3))
    section = PreprocessingSection(features="spectral", bands=4, normalize="standard" if standardized else "none")
    spec = preprocessing.fit(section, raw, 100.0)
    feats = preprocessing.transform(spec, raw)
    scale = np.linspace(0.5, 2.0, spec.n_features)
    shift = np.linspace(-1.0, 1.0, spec.n_features)
    folded = fold_calibration(spec, scale, shift)
    assert len(folded.blocks) == len(spec.blocks) + (0 if standardized else 1)
    assert np.allclose(preprocessing.transform(folded, raw), feats * scale + shift, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        fold_calibration(spec, scale[:-1], shift[:-1])


def test_a_microcontroller_keeps_a_calibration_only(tmp_path: Path) -> None:
    """TFLM targets carry what folds into their C pre-processing: never a head, not even one saved earlier."""
    from tinymlops.personalise import KINDS, MCU_KINDS, kinds_for_runtime

    assert kinds_for_runtime("tflm") == MCU_KINDS and kinds_for_runtime("onnxruntime") == KINDS
    weights = (0.85, 0.05, 0.05, 0.05)  # a class-mix change: the head is what helps on a Linux-class device
    xl, yl = draw(50, 7, weights)
    moments = moments_of(draw(500, 6, weights)[0])
    assert fit(xl, yl, predict, moments, REF_MEAN, REF_STD).kind == "head"
    mcu = fit(xl, yl, predict, moments, REF_MEAN, REF_STD, kinds=MCU_KINDS)
    assert mcu.kind in MCU_KINDS and mcu.weight is None and set(mcu.cv_loss) <= set(MCU_KINDS)
    shifted = fit(*draw(50, 4, gain=1.3), predict, moments_of(draw(500, 3, gain=1.3)[0]), REF_MEAN, REF_STD,
                  kinds=MCU_KINDS)
    assert shifted.kind == "calibration" and shifted.scale is not None
    # a head saved under Linux-class rules is not served by a device that can only calibrate
    head = Personalisation(kind="head", weight=np.eye(4), bias=np.zeros(4), labelled=50)
    (tmp_path / "personal.json").write_text(json.dumps({"key": {"feature_names": [f"f{i}" for i in range(6)],
                                                                "class_names": ["a", "b", "c", "d"]},
                                                        "personalisation": head.to_json()}))
    dev = DevicePersonaliser(tmp_path, enabled=True, kinds=MCU_KINDS)
    dev.wrap(Runner(), manifest())
    assert dev.current.kind == "none"
