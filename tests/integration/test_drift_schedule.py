"""``tinymlops schedule`` serves prefect.yaml's deployments: hourly drift and weekly pipeline on a live server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_schedule_serves_both_deployments_with_their_schedules(tmp_path: Path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "TINYMLOPS_HOME": str(tmp_path / "home"),
           "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "schedule.log").open("w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "tinymlops"), "schedule", "--model", "sched-model"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 150
        found: dict[str, dict] = {}
        url = None
        while time.time() < deadline and len(found) < 2:
            time.sleep(2)
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            text = Path(log.name).read_text()
            m = re.search(r"temporary server on (http://[0-9.:]+)", text)
            if m:
                url = m.group(1)
            if url:
                try:
                    r = httpx.post(f"{url}/api/deployments/filter", json={}, timeout=5)
                except httpx.HTTPError:
                    continue
                found = {d["name"]: d for d in r.json()} if r.status_code == 200 else {}
        assert set(found) == {"drift-hourly", "pipeline-weekly"}, Path(log.name).read_text()[-3000:]
        crons = {n: [s["schedule"].get("cron") for s in d["schedules"]] for n, d in found.items()}
        assert crons == {"drift-hourly": ["0 * * * *"], "pipeline-weekly": ["0 3 * * 1"]}
        assert found["drift-hourly"]["parameters"]["model"] == "sched-model"
        assert all(s["active"] for d in found.values() for s in d["schedules"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
