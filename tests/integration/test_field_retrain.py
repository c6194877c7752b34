"""Retrain on consented field data on a real MLflow store and fleet database (TensorFlow, few epochs).

A version trained on undrifted data is registered; devices of the drifted cohort (sensor gain 1.15) upload sealed,
labelled samples under consent through the fleet service; one device is then forgotten. The field-data retrain
registers a version whose lineage shows the configured splits and the field-train/field-test inputs (source
fleet, the remaining devices, their consent ids: the forgotten device's samples are not in it), compares old and
new on the held-out field split and moves the candidate alias exactly when the new version is better.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from tinymlops.fleet import field_seal, packages, service, store
from tinymlops.sim import demo_model

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MODEL = "it-field"
PIPELINE = {
    "kind": "pipeline", "project": "field-test",
    "mlflow": {"experiment": "it-field", "registered_model": MODEL},
    "dataset": {"name": "vibration", "seed": 3, "vibration": {"windows_per_class": 60}},
    "preprocessing": {"features": "spectral", "bands": 8},
    "model": {"arch": "mlp", "params": {"hidden": [16]}},
    "train": {"epochs": 8, "early_stopping_patience": 0},
    "stages": ["train"],
}


def _upload(tmp_path: Path, db: str, signer: Ed25519PrivateKey, devices: list[str], n_per_device: int) -> None:
    """Enrol devices, grant consent and upload sealed drifted samples through the in-process fleet service."""
    st = store.open_store(db)
    op = service.create_operator_token(st, name="field-admin")
    h = {"Authorization": f"Bearer {op}"}
    with TestClient(service.create_app(st=st)) as c:
        toks = c.post("/v1/enrolment-tokens", json={"cohort": "line-b", "count": len(devices)}, headers=h).json()
        statement = field_seal.key_statement(field_seal.field_key(), signer)
        assert c.put("/v1/field-policy", json={"key_statement": statement}, headers=h).status_code == 200
        key = field_seal.verify_statement(statement, [signer.public_key()])
        for i, (did, tok) in enumerate(zip(devices, toks["tokens"], strict=True)):
            cred = c.post("/v1/enrol", json={"enrolment_token": tok, "device_id": did, "target": "gw"}).json()
            consent = c.put(f"/v1/devices/{did}/field-consent", json={"grant": True}, headers=h).json()
            X, y = demo_model.draw(demo_model.VibrationParams(gain=1.15), 100 + i, n_per_device)
            for j in range(0, n_per_device, 32):
                now = time.time()
                body = field_seal.seal(key, did, j + 1, consent["consent_id"], X[j:j + 32], y[j:j + 32].tolist(),
                                       [0] * len(y[j:j + 32]), (now - 1, now))
                r = c.post(f"/v1/devices/{did}/field-samples", json=body,
                           headers={"Authorization": f"Bearer {cred['credential']}"})
                assert r.status_code == 200, r.text
        forgot = c.delete(f"/v1/devices/{devices[-1]}/field-samples", headers=h).json()
        assert forgot["samples_deleted"] == n_per_device
    st.dispose()


def test_field_retrain_registers_both_datasets_and_gates_the_candidate(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = time.monotonic()
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from tinymlops import registry
    from tinymlops.monitor.field_retrain import run_field_retrain
    from tinymlops.train import run_train

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(PIPELINE))
    drift = yaml.safe_load((REPO / "configs" / "drift.yaml").read_text())
    drift["retrain"].update(enabled=True, pipeline_config=str(pipeline))
    drift["retrain"]["field_data"].update(min_samples=40, weight=3.0)
    drift_path = tmp_path / "drift.yaml"
    drift_path.write_text(yaml.safe_dump(drift))

    old = run_train(pipeline)
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    signer = packages.signing_key()
    _upload(tmp_path, db, signer, ["b1", "b2", "b3"], 96)

    res = run_field_retrain(MODEL, drift_path, db)
    assert res.old_version == old.version and res.new_version == str(int(old.version) + 1)
    assert res.field_train_samples + res.field_test_samples == 2 * 96  # b3 was forgotten
    assert res.field_test_samples == pytest.approx(0.3 * 192, abs=4)
    assert res.old_field_accuracy is not None and res.new_field_accuracy is not None
    assert res.candidate_set == (res.new_field_accuracy > res.old_field_accuracy)
    alias = registry.get_alias(MODEL, "candidate")
    assert (alias is not None and alias.version == res.new_version) == res.candidate_set
    mv = registry.get_version(MODEL, res.new_version)
    assert mv.tags["field.version"] == res.field_version and mv.tags["field.compared_with"] == old.version
    assert mv.tags["field.verdict"] == res.reason

    run = registry.client().get_run(res.train_run_id)
    inputs = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]): {t.key: t.value for t in d.tags}
              for d in run.inputs.dataset_inputs}
    contexts = {ctx for _, ctx in inputs}
    assert contexts == {"train", "val", "test", "field-train", "field-test"}
    for (_name, ctx), tags in inputs.items():
        if ctx.startswith("field"):
            assert tags["tinymlops.field.source"] == "fleet" and tags["tinymlops.field.devices"] == "b1,b2"
            assert len(tags["tinymlops.field.consent_ids"].split(",")) == 2
            assert json.loads(tags["tinymlops.field.window"])[0] > 0
    n_train = int(registry.get_run(res.train_run_id).params["dataset.train_rows"])
    assert n_train > int(registry.get_run(old.run_id).params["dataset.train_rows"])  # field rows merged, weighted
    print(f"field retrain: old {res.old_field_accuracy:.3f} new {res.new_field_accuracy:.3f} on "
          f"{res.field_test_samples} field samples; {res.reason}; {time.monotonic() - t0:.1f} s")
