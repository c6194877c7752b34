"""Run hygiene on a real embedded MLflow store: owner tags, `tinymlops doctor`, ending open runs on an interrupt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinymlops import hygiene, registry

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """Return the pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _retag(run_id: str, tags: dict[str, str]) -> None:
    registry.set_tags(run_id, tags)


def test_owner_tags_name_this_process(tm_home: Path) -> None:
    ref = registry.start_run("exp-owner", "open")
    tags = registry.get_run(ref.run_id).tags
    assert tags[hygiene.PID_TAG] == str(os.getpid())
    assert hygiene.owner_state(tags) == "live"
    assert ref.run_id in hygiene.open_runs()
    registry.end_run(ref.run_id)
    assert ref.run_id not in hygiene.open_runs()
    assert registry.get_run(ref.run_id).status == "FINISHED"


def test_owner_state_dead_reused_unknown_other_host() -> None:
    me = hygiene.owner_tags()
    assert hygiene.owner_state(me) == "live"
    assert hygiene.owner_state({**me, hygiene.PID_TAG: str(_dead_pid())}) == "dead"
    if me[hygiene.PID_START_TAG]:  # Linux: a live pid with another start time is a reused pid
        assert hygiene.owner_state({**me, hygiene.PID_START_TAG: "1"}) == "dead"
    assert hygiene.owner_state({}) == "unknown"
    assert hygiene.owner_state({**me, hygiene.HOST_TAG: "some-other-host"}) == "other-host"


def test_doctor_ends_only_runs_of_dead_processes(tm_home: Path) -> None:
    from cli import app

    live = registry.start_run("exp-doctor", "live")
    crashed = registry.start_run("exp-doctor", "crashed")
    remote = registry.start_run("exp-doctor", "remote")
    version = registry.register_version("doctor-model", crashed.run_id, {"variant": "x"}, "half-registered")
    _retag(crashed.run_id, {hygiene.PID_TAG: str(_dead_pid())})
    _retag(remote.run_id, {hygiene.HOST_TAG: "some-other-host"})
    runner = CliRunner()

    res = runner.invoke(app, ["doctor", "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    by_name = {r["name"]: r for r in report["runs"]}
    assert report["problems"] == 1 and by_name["crashed"]["problem"]
    assert by_name["live"]["state"] == "live" and not by_name["live"]["problem"]
    assert by_name["remote"]["state"] == "other-host" and not by_name["remote"]["problem"]
    assert registry.get_run(crashed.run_id).status == "RUNNING"  # without --fix nothing changes

    res = runner.invoke(app, ["doctor", "--fix"])
    assert res.exit_code == 0, res.output
    assert registry.get_run(crashed.run_id).status == "KILLED"
    assert registry.get_run(crashed.run_id).tags[hygiene.ENDED_BY_TAG] == "tinymlops doctor"
    assert registry.get_version("doctor-model", version).tags[hygiene.INCOMPLETE_TAG] == "crashed"
    assert registry.get_run(live.run_id).status == "RUNNING"
    assert registry.get_run(remote.run_id).status == "RUNNING"
    for ref in (live, remote):
        registry.end_run(ref.run_id)
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0 and "healthy" in res.stdout
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert report["healthy"] and report["runs"] == []
    assert [(v["model"], v["version"], v["incomplete"]) for v in report["incomplete_versions"]] == [
        ("doctor-model", version, "crashed")]


def test_doctor_ends_unowned_runs_only_when_asked(tm_home: Path) -> None:
    from cli import app

    ref = registry.start_run("exp-unowned", "old")
    registry.client().delete_tag(ref.run_id, hygiene.PID_TAG)
    runner = CliRunner()
    assert runner.invoke(app, ["doctor", "--fix"]).exit_code == 1
    assert registry.get_run(ref.run_id).status == "RUNNING"
    assert runner.invoke(app, ["doctor", "--fix", "--unowned"]).exit_code == 0
    assert registry.get_run(ref.run_id).status == "KILLED"


def test_shutdown_kills_open_runs_and_freezes_other_threads(tmp_path: Path) -> None:
    """After end_open_runs(shutdown=True) open runs are KILLED and no thread can register or end anything."""
    script = textwrap.dedent("""
        import json, threading
        from tinymlops import registry
        registry.connect()
        done = registry.start_run("exp-shutdown", "finished")
        registry.end_run(done.run_id)
        v_done = registry.register_version("m", done.run_id, {}, "complete")
        parent = registry.start_run("exp-shutdown", "parent")
        child = registry.start_run("exp-shutdown", "child", parent.run_id)
        v_half = registry.register_version("m", child.run_id, {}, "half")
        snap = registry.end_open_runs("KILLED", "interrupted", shutdown=True)
        late = threading.Thread(target=registry.register_version, args=("m", parent.run_id, {}, "late"), daemon=True)
        ender = threading.Thread(target=registry.end_run, args=(child.run_id,), daemon=True)
        late.start(); ender.start(); late.join(1.5); ender.join(0.5)
        st = {n: registry.get_run(r.run_id).status for n, r in (("done", done), ("parent", parent), ("child", child))}
        vt = {v: registry.get_version("m", v).tags.get("tinymlops.incomplete") for v in (v_done, v_half)}
        print(json.dumps({"status": st, "incomplete": vt, "snap_runs": len(snap.runs),
                          "late_blocked": late.is_alive(), "ender_blocked": ender.is_alive(),
                          "versions": len(registry.list_versions("m"))}))
    """)
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["status"] == {"done": "FINISHED", "parent": "KILLED", "child": "KILLED"}
    assert res["incomplete"] == {"1": None, "2": "interrupted"}
    assert res["snap_runs"] == 2 and res["late_blocked"] and res["ender_blocked"]
    assert res["versions"] == 2  # the late registration never happened


def test_run_block_interrupted_ends_killed_and_tags_its_version(tm_home: Path) -> None:
    class Signalled(BaseException):  # like KeyboardInterrupt or Prefect's TerminationSignal
        pass

    ids: dict[str, str] = {}
    try:
        with registry.run("exp-interrupted", "stage") as r:
            ids["run"] = r.run_id
            ids["version"] = registry.register_version("int-model", r.run_id, {}, "cut off")
            raise Signalled
    except Signalled:
        pass
    run = registry.get_run(ids["run"])
    assert run.status == "KILLED" and run.tags["error"].startswith("Signalled")
    assert registry.get_version("int-model", ids["version"]).tags[hygiene.INCOMPLETE_TAG] == "interrupted"
    with pytest.raises(ValueError), registry.run("exp-interrupted", "broken") as r:
        raise ValueError("bad")
    assert registry.get_run(r.run_id).status == "FAILED"


def test_profile_skips_incomplete_versions(tm_home: Path, tmp_path: Path) -> None:
    from tinymlops.profile.matrix import fetch_versions

    ref = registry.start_run("exp-profile", "variant")
    version = registry.register_version("prof-model", ref.run_id, {hygiene.INCOMPLETE_TAG: "interrupted"}, "cut off")
    registry.end_run(ref.run_id)
    versions, skipped = fetch_versions("prof-model", tmp_path)
    assert versions == []
    assert skipped == [f"version {version}: incomplete (interrupted), not a candidate"]
