"""Fleet service with ``--workers 2`` on a real PostgreSQL: concurrent retried telemetry is stored exactly once,
and a drift check reads what the service stored.

Devices enrol through the API; every report is posted 4 times at once on separate connections (a device retrying
after timeouts while the first attempts are still in flight), so copies land on both worker processes and race
in PostgreSQL; the unique (device_id, seq) key with ON CONFLICT DO NOTHING must keep exactly one row each.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _postgres  # noqa: E402
from _fleet import serve_fleet, write_gw_target  # noqa: E402

pytestmark = _postgres.marks()
MODEL = "pg-fleet"
N_DEVICES, N_SEQ, COPIES = 20, 5, 4


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """PostgreSQL, a registered demo model published to it, `fleet serve --workers 2`, 20 enrolled devices."""
    import httpx

    from tinymlops import registry
    from tinymlops.fleet import store
    from tinymlops.rollout.publish import publish_package
    from tinymlops.sim.demo_model import register_demo_model

    home = tmp_path_factory.mktemp("pg-fleet-home")
    old = {k: os.environ.get(k) for k in ("TINYMLOPS_HOME", "MLFLOW_TRACKING_URI", "TINYMLOPS_FLEET_DB")}
    os.environ["TINYMLOPS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    targets = write_gw_target(home / "targets")
    registry._client = None
    registry.connect()
    version = register_demo_model(MODEL, seed=0)
    with _postgres.postgres_server() as server:
        url = _postgres.create_database(server, "fleet")
        os.environ["TINYMLOPS_FLEET_DB"] = url
        st = store.open_store(url)
        pid = publish_package(st, MODEL, version, "gw", targets_dir=targets)
        proc, base, token = serve_fleet(url, dict(os.environ), "--workers", "2", "--targets-dir", str(targets))
        try:
            op = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"})
            tokens = op.post("/v1/enrolment-tokens", json={"cohort": "pg", "count": N_DEVICES}).json()["tokens"]
            creds = {}
            for i, tok in enumerate(tokens):
                r = op.post("/v1/enrol", json={"enrolment_token": tok, "device_id": f"pg-{i:02d}", "target": "gw"})
                r.raise_for_status()
                creds[f"pg-{i:02d}"] = r.json()["credential"]
            op.put("/v1/desired-state", json={"package_id": pid, "cohort": "pg"}).raise_for_status()
            with st.session() as s:
                manifest = json.loads(s.get(store.Package, pid).manifest_json)
            yield {"url": url, "base": base, "creds": creds, "pid": pid, "store": st, "proc": proc,
                   "manifest": manifest, "home": home, "version": version}
        finally:
            proc.stop()
            st.dispose()
            registry._client = None
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _sketches(manifest: dict[str, Any], n: int, now: float) -> list[dict[str, Any]]:
    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.monitor.sketches import SketchBuilder

    ref = ReferenceProfile.model_validate(manifest["reference"])
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        b = SketchBuilder(ref)
        for i in range(50):
            b.add(rng.normal(size=len(ref.features)), rng.dirichlet(np.ones(len(ref.class_names))),
                  latency_ms=1.0, timestamp=now - 120 + i)
        out.append(b.flush().model_dump())
    return out


def test_two_workers_store_each_concurrently_retried_report_exactly_once(fleet: dict[str, Any]) -> None:
    import httpx
    from sqlalchemy import func, select

    from tinymlops.fleet.store import Telemetry

    workers = [p for p in _child_pids(fleet["proc"].p.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) >= 2, f"expected 2 worker processes, found {workers}"
    sketches = _sketches(fleet["manifest"], N_SEQ, time.time())

    def post(job: tuple[str, int]) -> int:
        did, seq = job
        body = {"seq": seq, "package_id": fleet["pid"], "sketch": sketches[seq - 1]}
        with httpx.Client(base_url=fleet["base"], timeout=60) as c:  # a fresh connection per attempt
            return c.post(f"/v1/devices/{did}/telemetry", json=body,
                          headers={"Authorization": f"Bearer {fleet['creds'][did]}"}).status_code

    jobs = [(did, seq) for did in fleet["creds"] for seq in range(1, N_SEQ + 1) for _ in range(COPIES)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(post, jobs))
    assert codes.count(202) == len(jobs), sorted(set(codes))
    with fleet["store"].session() as s:
        total = s.scalar(select(func.count()).select_from(Telemetry))
        per = dict(s.execute(select(Telemetry.device_id, func.count()).group_by(Telemetry.device_id)).all())
    assert total == N_DEVICES * N_SEQ
    assert per == dict.fromkeys(fleet["creds"], N_SEQ)


def test_drift_check_reads_the_telemetry_the_service_stored(fleet: dict[str, Any]) -> None:
    from tinymlops.monitor.check import run_drift_check

    cfg = fleet["home"] / "drift.yaml"
    cfg.write_text("kind: drift\nwindow: 1h\nexperiment: pg-drift\nthresholds: {}\nretrain: {enabled: false}\n")
    res = run_drift_check(MODEL, cfg, store_url=fleet["url"], log=False)
    assert [(g.target, g.cohort) for g in res.groups] == [("gw", "pg")]
    summary = res.to_dict()["groups"][0]["summary"]
    assert summary["n_devices"] == N_DEVICES, summary
    assert res.level != "insufficient data"


def _child_pids(parent: int) -> list[int]:
    """Return the PIDs of a process's children (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(parent):
            kids.append(int(stat.parent.name))
    return kids


def test_report_numbered_by_millisecond_clock_is_stored(fleet: dict[str, Any]) -> None:
    """The agent numbers reports by ms clock (~1.8e12): past int32, which PostgreSQL's `integer` refused (500)."""
    import httpx

    did = next(iter(fleet["creds"]))
    seq = int(time.time() * 1000)
    body = {"seq": seq, "package_id": fleet["pid"], "sketch": _sketches(fleet["manifest"], 1, time.time())[0]}
    r = httpx.post(f"{fleet['base']}/v1/devices/{did}/telemetry", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {fleet['creds'][did]}"})
    assert r.status_code == 202, r.text
    from sqlalchemy import select

    from tinymlops.fleet.store import Telemetry

    with fleet["store"].session() as s:
        assert s.scalar(select(Telemetry.seq).where(Telemetry.device_id == did, Telemetry.seq == seq)) == seq
