"""Real signals to real `tinymlops` processes: exit 130/143 within 10 s, no traceback, nothing left RUNNING.

Each test starts the console script in a fresh project home, waits until the work is really under way (polling the
MLflow store, or the temporary Prefect server's process), sends the signal and then checks the exit code and time,
stderr, the store (no RUNNING run; a version whose run was cut off is tagged ``tinymlops.incomplete``) and that no
child process (Prefect's temporary server, runtimes) survived.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXE = shutil.which("tinymlops", path=str(Path(sys.executable).parent)) or "tinymlops"

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        out += frontier
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _config(tmp_path: Path, train_epochs: int, variants: list[dict[str, Any]]) -> Path:
    """A small copy of the demo config: train (no early stop) and a few compress variants, nothing after."""
    cfg = yaml.safe_load((REPO / "configs" / "pipeline.yaml").read_text())
    for key in ("drift", "rollout", "demo_fleet"):
        cfg.pop(key, None)
    cfg["train"].update(epochs=train_epochs, early_stopping_patience=0)
    cfg["compress"]["variants"] = variants
    cfg["stages"] = ["train", "compress"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start(args: list[str], home: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) and k != "TINYMLOPS_HOME"}
    env.update(TINYMLOPS_HOME=str(home), PYTHONUNBUFFERED="1")
    # its own process group, like a command started from a terminal (Ctrl-C signals the whole group)
    return subprocess.Popen([EXE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _run_status(db: Path, name: str) -> str | None:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute("SELECT status FROM runs WHERE name = ? ORDER BY start_time", (name,)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return rows[-1][0] if rows else None


def _wait_for(proc: subprocess.Popen[str], what: str, ready: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        if ready():
            return
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def _interrupt(proc: subprocess.Popen[str], sig: int) -> tuple[float, str, list[int]]:
    """Send a signal (SIGINT to the process group, as Ctrl-C in a terminal does; SIGTERM to the process, as
    `kill` does); return seconds until exit, stderr and the children the process had."""
    children = _descendants(proc.pid)
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running 30 s after {signal.Signals(sig).name}:\n{err[-3000:]}")
    return time.monotonic() - t0, err, children


def _store(home: Path) -> tuple[dict[str, str], dict[tuple[str, str], dict[str, str]], dict[str, str]]:
    """Return run name -> status (last of each name), version -> tags, version -> source run status."""
    con = sqlite3.connect(home / "mlflow.db")
    try:
        runs = {name: status for name, status in
                con.execute("SELECT name, status FROM runs ORDER BY start_time").fetchall()}
        status_by_id = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
        versions = con.execute("SELECT name, version, run_id FROM model_versions").fetchall()
        tags: dict[tuple[str, str], dict[str, str]] = {(n, str(v)): {} for n, v, _ in versions}
        for n, v, k, val in con.execute("SELECT name, version, key, value FROM model_version_tags").fetchall():
            tags.setdefault((n, str(v)), {})[k] = val
        source = {f"{n}/{v}": status_by_id.get(r, "?") for n, v, r in versions}
    finally:
        con.close()
    return runs, tags, source


def _check_clean_exit(elapsed: float, err: str, children: list[int], code: int, rc: int, sig: str) -> None:
    print(f"{sig}: exit {rc} after {elapsed:.2f} s; {len(children)} child process(es); {err.strip().splitlines()[-1]}")
    assert rc == code, err[-3000:]
    assert elapsed < 10, f"took {elapsed:.1f} s"
    survivors = [p for p in children if _alive(p)]
    assert children, "expected at least Prefect's temporary server as a child process"
    assert survivors == [], f"child processes survived: {survivors}"
    assert "Traceback" not in err, err[-3000:]
    assert f"interrupted ({sig})" in err.strip().splitlines()[-1], err[-3000:]


def test_sigint_stops_run_during_compress(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = _config(tmp_path, 15, [{"technique": "ptq-int8"}, {"technique": "qat-int8", "epochs": 400}])
    proc = _start(["run", "-c", str(config)], home, tmp_path)
    db = home / "mlflow.db"
    _wait_for(proc, "the qat-int8 variant to run", lambda: _run_status(db, "qat-int8") == "RUNNING", 300)
    assert _run_status(db, "pipeline") == "RUNNING"
    time.sleep(2)  # into its fine-tuning epochs
    elapsed, err, children = _interrupt(proc, signal.SIGINT)
    _check_clean_exit(elapsed, err, children, 130, proc.returncode, "SIGINT")

    runs, tags, source = _store(home)
    assert "RUNNING" not in runs.values(), runs
    assert runs["pipeline"] == "KILLED" and runs["compress"] == "KILLED" and runs["qat-int8"] == "KILLED"
    assert runs["train mlp"] == "FINISHED"
    # a version is complete (its run finished) or tagged incomplete; the interrupted variant registered nothing
    for key, t in tags.items():
        finished = source[f"{key[0]}/{key[1]}"] == "FINISHED"
        assert finished or t.get("tinymlops.incomplete") == "interrupted", (key, t)
        assert t.get("variant") != "qat-int8" or t.get("tinymlops.incomplete") == "interrupted"
    time.sleep(3)  # nothing keeps writing after the exit (the old code went on and registered a version)
    assert _store(home)[1] == tags


def test_sigterm_stops_train(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = _config(tmp_path, 1000, [])
    proc = _start(["train", "-c", str(config)], home, tmp_path)
    db = home / "mlflow.db"
    _wait_for(proc, "training to run", lambda: _run_status(db, "train mlp") == "RUNNING", 300)
    time.sleep(3)
    elapsed, err, children = _interrupt(proc, signal.SIGTERM)
    _check_clean_exit(elapsed, err, children, 143, proc.returncode, "SIGTERM")
    runs, tags, _ = _store(home)
    assert runs == {"train mlp": "KILLED"}
    assert tags == {}


def test_sigint_stops_schedule(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _start(["schedule", "--prefect-file", str(REPO / "prefect.yaml")], home, REPO)

    def serving() -> bool:  # the temporary Prefect server is up and the deployments are registered with it
        kids = _descendants(proc.pid)
        return bool(kids) and (home / "prefect").is_dir() and time.sleep(8) is None and proc.poll() is None

    _wait_for(proc, "the scheduler to serve", serving, 180)
    elapsed, err, children = _interrupt(proc, signal.SIGINT)
    _check_clean_exit(elapsed, err, children, 130, proc.returncode, "SIGINT")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mlflow_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen[bytes]:
    import urllib.request

    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root",
                             artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not start")


def test_store_server_killed_mid_train_is_one_line_then_doctor_ends_the_run(tmp_path: Path) -> None:
    """The MLflow server dies while `train` logs to it: one error line naming the store (no tracebacks), exit 1,
    a pointer to `doctor`; once the server is back, `doctor --fix` ends the run the crash left RUNNING."""
    db, artifacts, port = tmp_path / "server.db", tmp_path / "artifacts", _free_port()
    server = _mlflow_server(db, artifacts, port)
    uri = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    config = _config(tmp_path, 1000, [])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(TINYMLOPS_HOME=str(home), MLFLOW_TRACKING_URI=uri)
    proc = subprocess.Popen([EXE, "train", "-c", str(config)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(proc, "training to log to the server", lambda: _run_status(db, "train mlp") == "RUNNING", 300)
        time.sleep(2)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"MLflow store {uri}:" in errors[0], err[-3000:]
    assert "tinymlops doctor --fix" in err
    assert _run_status(db, "train mlp") == "RUNNING"  # nobody could tell the dead server

    server = _mlflow_server(db, artifacts, port)
    try:
        res = subprocess.run([EXE, "doctor", "--fix"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert _run_status(db, "train mlp") == "KILLED"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_sigterm_stops_ui_and_its_server(tmp_path: Path) -> None:
    """`tinymlops ui` runs `mlflow server` as a child: SIGTERM left it running (orphaned) on its port."""
    import urllib.request

    port = _free_port()
    proc = _start(["ui", "--port", str(port)], tmp_path / "home", tmp_path)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    _wait_for(proc, "the MLflow UI to answer", answers, 120)
    elapsed, err, children = _interrupt(proc, signal.SIGTERM)
    _check_clean_exit(elapsed, err, children, 143, proc.returncode, "SIGTERM")
    assert not answers()
