"""Consented field data end to end with real processes: `tinymlops fleet serve`, two `tinymlops agent`s reading
labelled windows, `tinymlops fleet consent|field-data|forget`.

Only the consenting device's samples reach the service (sealed; the other device's never: no batch, no telemetry
sample); the export decrypts them into a versioned Parquet dataset with MLflow lineage; after `fleet forget` the
samples are gone, the deletion is audited and a later export has nothing of that device.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from _fleet import Proc, serve_fleet, until, write_gw_target
from sqlalchemy import select

from tinymlops.fleet import packages, store
from tinymlops.fleet.field import FieldBatch
from tinymlops.sim import demo_model
from tinymlops.sim.command import product_command

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path):
    home = tmp_path / "home"
    env = {**os.environ, "TINYMLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    (home / "keys").mkdir(parents=True)
    key = packages.signing_key(home / "keys")
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    server, url, token = serve_fleet(db, env, "--poll-interval", "0.2", "--targets-dir",
                                     str(write_gw_target(tmp_path / "targets")))
    op = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {token}"})
    manifest = demo_model.build_demo_package(tmp_path / "pkg", model_name="field-demo")
    bundle = packages.sign({**manifest, "model_version": "1", "target": "gw", "runtime": "onnxruntime"},
                           (tmp_path / "pkg" / "model.onnx").read_bytes(), key)
    assert op.post("/v1/packages", json=bundle.upload_json()).status_code == 201
    yield {"root": tmp_path, "home": home, "env": env, "url": url, "db": db, "op": op, "package": bundle.id}
    op.close()
    server.stop()


def _cli(f: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*product_command("fleet", *args)], env=f["env"], capture_output=True, text=True, timeout=180)
    assert (p.returncode == 0) == ok, p.stderr
    return p


def _agent(f: dict, device: str, token: str, inputs: Path) -> Proc:
    from tinymlops.sim.simulator import write_token_file

    state = f["root"] / "dev" / device
    return Proc([*product_command("agent"), "--server", f["url"], "--device-id", device, "--target", "gw",
                 "--state-dir", str(state), "--trusted-key", str(f["home"] / "keys" / packages.PUBLIC_KEY_FILE),
                 "--targets-dir", str(f["root"] / "targets"), "--input", str(inputs), "--report-interval", "0.5",
                 "--inference-interval", "0.004", "--enrolment-token-file", str(write_token_file(state, token))],
                f["env"])


def test_only_consented_samples_leave_devices_and_forget_removes_them(fleet: dict) -> None:
    t0 = time.monotonic()
    op, root = fleet["op"], fleet["root"]
    X, y = demo_model.draw(demo_model.VibrationParams(gain=1.15), 3, 1500)
    inputs = root / "windows.jsonl"
    inputs.write_text("".join(json.dumps({"values": x.tolist(), "label": int(lbl)}) + "\n"
                              for x, lbl in zip(X.astype(np.float32), y, strict=True)))
    tokens = op.post("/v1/enrolment-tokens", json={"cohort": "line-b", "count": 2}).json()["tokens"]
    op.put("/v1/desired-state", json={"package_id": fleet["package"], "cohort": "line-b"}).raise_for_status()
    agents = {d: _agent(fleet, d, t, inputs) for d, t in zip(("dev-on", "dev-off"), tokens, strict=True)}
    until(lambda: {d["id"] for d in op.get("/v1/devices").json()} >= {"dev-on", "dev-off"})
    pol = json.loads(_cli(fleet, "field-data", "policy", "--server", fleet["url"], "--window", "1s",
                          "--reservoir-size", "8", "--json").stdout)
    assert pol["reservoir_size"] == 8 and pol["window_s"] == 1.0
    granted = json.loads(_cli(fleet, "consent", "dev-on", "--grant", "--server", fleet["url"], "--json").stdout)
    assert granted["active"] and granted["granted_by"] == "cli"  # the name of the token `fleet serve` wrote

    def batches() -> list[dict]:
        return list(op.get("/v1/field-batches").json())

    until(lambda: sum(b["count"] for b in batches()) >= 24, 90)
    for a in agents.values():
        a.stop()
    got = batches()
    assert {b["device_id"] for b in got} == {"dev-on"} and all(b["count"] <= 8 for b in got)
    assert {b["consent_id"] for b in got} == {granted["consent_id"]}
    st = store.open_store(fleet["db"])
    with st.session() as s:  # the device without consent left nothing: no batch, no raw sample in telemetry
        assert s.scalars(select(FieldBatch).where(FieldBatch.device_id == "dev-off")).first() is None
        rows = s.scalars(select(store.Telemetry).where(store.Telemetry.device_id == "dev-off")).all()
        assert rows and all(r.samples_json is None for r in rows)  # it did report sketches

    out = root / "export"
    exp = json.loads(_cli(fleet, "field-data", "export", "--db", fleet["db"], "--out", str(out), "--json").stdout)
    n = sum(b["count"] for b in got)
    assert exp["samples"] == n and exp["devices"] == ["dev-on"] and exp["consent_ids"] == [granted["consent_id"]]
    assert exp["cohorts"] == ["line-b"] and exp["source"] == "fleet" and exp["input_shape"] == list(X.shape[1:])
    df = pd.read_parquet(exp["path"])
    assert len(df) == n and set(df["label"]) <= set(range(4)) and len(df["x"][0]) == X[0].size
    # the exported windows are windows the device read, with their true labels
    known = {np.float32(w[0, 0]).item(): int(lbl) for w, lbl in zip(X, y, strict=True)}
    assert all(known[np.float32(x[0]).item()] == lbl for x, lbl in zip(df["x"], df["label"], strict=True))

    from tinymlops import registry

    registry.connect(fleet["env"]["MLFLOW_TRACKING_URI"])
    inputs_logged = registry.client().get_run(exp["mlflow_run_id"]).inputs.dataset_inputs
    tags = {t.key: t.value for t in inputs_logged[0].tags}
    assert tags["tinymlops.field.source"] == "fleet" and tags["tinymlops.field.devices"] == "dev-on"
    assert tags["tinymlops.field.consent_ids"] == granted["consent_id"] and tags["mlflow.data.context"] == "field"

    forgot = json.loads(_cli(fleet, "forget", "dev-on", "--server", fleet["url"], "--json").stdout)
    assert forgot["samples_deleted"] == n and forgot["consents_revoked"] == 1
    assert batches() == [] and op.get("/v1/field-forgets").json()[0]["device_id"] == "dev-on"
    empty = _cli(fleet, "field-data", "export", "--db", fleet["db"], "--out", str(out), ok=False)
    assert empty.returncode == 2 and "no consented field samples" in empty.stderr
    assert "Traceback" not in empty.stderr
    print(f"field fleet test: {time.monotonic() - t0:.1f} s")
