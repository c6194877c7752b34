"""Containers that build and run here: both images built with podman from a local base image and a host
wheelhouse (no registry, no network in the builds), then the compose stack (PostgreSQL, MLflow server, fleet
service, one agent) comes up with podman-compose and the agent installs a package and reports telemetry.

Prints image sizes, the time from nothing to an agent serving a package, and the agent's RSS while serving.
Needs root, podman, runc, debootstrap and podman-compose (.ci/run installs them); marked ``containers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = "localhost/debian-python:bookworm"
SERVER, AGENT, POSTGRES = "localhost/tinymlops-server:test", "localhost/tinymlops-agent:test", \
    "localhost/tinymlops-postgres:15"
HEAVY = ("tensorflow", "mlflow", "prefect", "evidently", "typer", "rich", "click", "fastapi")

pytestmark = [
    pytest.mark.integration, pytest.mark.containers,
    pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("podman", "podman-compose",
                                                                              "debootstrap", "runc")),
                       reason="needs root, podman, podman-compose, runc and debootstrap (see docs/deploy.md)"),
]


def _run(*cmd: str, timeout: float = 900, env: dict[str, str] | None = None, check: bool = True,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)[:200]} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wheelhouse() -> Path:
    """Wheels of every pinned dependency, built on the host once per constraints.txt + pyproject.toml."""
    key = hashlib.sha256((REPO / "constraints.txt").read_bytes() + (REPO / "pyproject.toml").read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinymlops" / \
        f"wheels-{key.hexdigest()[:12]}"
    if not (cache / ".complete").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        _run(sys.executable, "-m", "pip", "wheel", "-q", "-c", str(REPO / "constraints.txt"), "-w", str(cache),
             # async-timeout: redis needs it on Python < 3.11.3 (Debian bookworm's 3.11.2), not on the host's
             f"{REPO}[postgres]", "setuptools", "wheel", "async-timeout", timeout=1800)
        for w in cache.glob("tinymlops-*.whl"):  # the images build their own from the context
            w.unlink()
        (cache / ".complete").touch()
    return cache


def _context(tmp: Path) -> Path:
    """A build context: the working tree's files (what .dockerignore lets through) and the wheelhouse."""
    ctx = tmp / "context"
    files = _run("git", "ls-files", "-co", "--exclude-standard", cwd=REPO).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / rel)
    def link(src: str, dst: str) -> None:  # the wheelhouse is 1.2 GB: hard links where the file system allows
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(_wheelhouse(), ctx / "docker" / "wheels", dirs_exist_ok=True, copy_function=link)
    return ctx


def _size_mb(image: str) -> float:
    return int(_run("podman", "image", "inspect", "--format", "{{.Size}}", image).stdout.strip()) / 1e6


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    t0 = time.perf_counter()
    _run("bash", str(REPO / "docker" / "podman-setup.sh"), timeout=900)
    ctx = _context(tmp_path_factory.mktemp("containers"))
    free = {"before": shutil.disk_usage("/var/lib").free / 1e9}
    times = {}
    for tag, dockerfile, target in ((AGENT, "docker/Dockerfile", "agent"), (SERVER, "docker/Dockerfile", "server"),
                                    (POSTGRES, "docker/postgres/Dockerfile", None)):
        t = time.perf_counter()
        # host network only for the postgres image's apt-get (Debian's mirror); pip never leaves the wheelhouse
        _run("podman", "build", "--network", "host" if target is None else "none", "-f", dockerfile,
             "--build-arg", f"BASE_IMAGE={BASE}", *(["--target", target] if target else []), "-t", tag, str(ctx),
             timeout=1800)
        times[tag] = time.perf_counter() - t
    sizes = {tag: _size_mb(tag) for tag in (BASE, AGENT, SERVER, POSTGRES)}
    free["after"] = shutil.disk_usage("/var/lib").free / 1e9
    print(f"\nfree disk before/after the builds: {free['before']:.1f} / {free['after']:.1f} GB")
    print("\nimage sizes (MB): " + ", ".join(f"{k.split('/')[-1]} {v:.0f}" for k, v in sizes.items()))
    print("build seconds: " + ", ".join(f"{k.split('/')[-1]} {v:.0f}" for k, v in times.items()))
    yield {"t0": t0, "sizes": sizes, "ctx": ctx}
    # the build stages and the images these tags replaced (GBs each run); the tagged images stay for a rerun's cache
    _run("podman", "image", "prune", "-f", check=False)


def test_agent_image_has_no_heavy_framework_and_runs_the_agent(images: dict[str, Any]) -> None:
    code = ("import importlib.util as u, sys; import tinymlops.fleet.agent_main, tinymlops.fleet.agent; "
            f"print([m for m in {HEAVY!r} if u.find_spec(m) or m in sys.modules])")
    r = _run("podman", "run", "--rm", "--network", "none", "--entrypoint", "python", AGENT, "-c", code)
    assert r.stdout.strip() == "[]", r.stdout
    r = _run("podman", "run", "--rm", "--network", "none", AGENT, "--help")
    assert r.stdout.startswith("usage: tinymlops-agent") and "--input" in r.stdout
    r = _run("podman", "run", "--rm", "--network", "none", AGENT, "--device-id", "d", check=False)
    assert r.returncode == 2 and "required: --target, --input" in r.stderr
    print(f"\nagent image {images['sizes'][AGENT]:.0f} MB (goal <= 250 MB), server image "
          f"{images['sizes'][SERVER]:.0f} MB")


def test_server_image_runs_flows_and_prefect_yaml(images: dict[str, Any]) -> None:
    """The CLI's flow-backed commands import flows/ and find prefect.yaml in the server image."""
    r = _run("podman", "run", "--rm", "--network", "none", SERVER, "tinymlops", "schedule", "--dry-run")
    assert "drift" in r.stdout and "pipeline" in r.stdout, r.stdout + r.stderr
    r = _run("podman", "run", "--rm", "--network", "none", SERVER, "python", "-c",
             "import flows.pipeline, psycopg; print('ok')")
    assert r.stdout.strip() == "ok"


class Stack:
    """One podman-compose project of docker/compose.yaml on free host ports."""

    def __init__(self) -> None:
        self.project = f"tmltest{os.getpid()}"
        self.fleet_port, self.mlflow_port = _free_port(), _free_port()
        self.env = {**os.environ, "TINYMLOPS_SERVER_IMAGE": SERVER, "TINYMLOPS_AGENT_IMAGE": AGENT,
                    "POSTGRES_IMAGE": POSTGRES, "FLEET_PORT": str(self.fleet_port),
                    "MLFLOW_PORT": str(self.mlflow_port), "POSTGRES_PASSWORD": "ci-secret"}

    def compose(self, *args: str, timeout: float = 600, extra: dict[str, str] | None = None) -> str:
        return _run("podman-compose", "-p", self.project, "-f", str(REPO / "docker" / "compose.yaml"), *args,
                    env={**self.env, **(extra or {})}, timeout=timeout).stdout

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def exec(self, service: str, *cmd: str, timeout: float = 600) -> str:
        return _run("podman", "exec", self.container(service), *cmd, timeout=timeout).stdout


def _wait(what: str, probe: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception:  # not up yet
            got = None
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_compose_stack_agent_installs_a_package_and_reports(images: dict[str, Any]) -> None:
    import httpx

    st = Stack()
    try:
        st.compose("up", "-d", "postgres")
        _wait("postgres", lambda: subprocess.run(["podman", "exec", st.container("postgres"), "pg_isready", "-h",
                                                  "127.0.0.1"], capture_output=True).returncode == 0, 120)
        st.compose("up", "-d", "mlflow", "fleet")
        fleet = f"http://127.0.0.1:{st.fleet_port}"
        try:
            _wait("fleet service", lambda: httpx.get(f"{fleet}/healthz").status_code == 200, 240)
        except AssertionError as exc:
            logs = subprocess.run(["podman", "logs", "--tail", "20", st.container("fleet")], capture_output=True,
                                  text=True)
            raise AssertionError(f"{exc}\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}") from None
        _wait("mlflow", lambda: httpx.get(f"http://127.0.0.1:{st.mlflow_port}/health").status_code == 200, 240)
        # register over HTTP through the service name (Host: mlflow:5000), build + upload + deploy the package
        version = st.exec("fleet", "python", "-c", "from tinymlops.sim.demo_model import register_demo_model; "
                          "print(register_demo_model('edge-demo'))").strip().splitlines()[-1]
        info = json.loads(st.exec("fleet", "tinymlops", "package", "edge-demo", version, "--target",
                                  "host-onnxruntime", "--upload", "--server", "http://127.0.0.1:8700", "--json"))
        pid = info["package_id"]
        st.exec("fleet", "tinymlops", "fleet", "deploy", pid, "--cohort", "edge", "--server", "http://127.0.0.1:8700")
        token = json.loads(st.exec("fleet", "tinymlops", "fleet", "enrol-token", "--cohort", "edge", "--server",
                                   "http://127.0.0.1:8700", "--json"))["tokens"][0]
        st.compose("up", "-d", "agent", extra={"TINYMLOPS_ENROLMENT_TOKEN": token})
        op_token = st.exec("fleet", "cat", "/data/home/fleet/operator-token").strip()
        op = httpx.Client(base_url=fleet, headers={"Authorization": f"Bearer {op_token}"}, timeout=30)

        def serving() -> bool:
            devices = op.get("/v1/devices").json()
            rows = devices if isinstance(devices, list) else devices.get("devices", [])
            return any(d["id"] == "edge-0001" and d.get("current_package_id") == pid for d in rows)

        try:
            _wait("the agent to install the package", serving, 240)
        except AssertionError as exc:
            logs = {s: subprocess.run(["podman", "logs", "--tail", "30", st.container(s)], capture_output=True,
                                      text=True).stderr[-3000:] for s in ("agent", "fleet")}
            raise AssertionError(f"{exc}\n{json.dumps(logs, indent=1)}") from None
        serving_s = time.perf_counter() - images["t0"]
        reports = _wait("the agent's telemetry", lambda: op.get("/v1/telemetry", params={
            "model_name": "edge-demo", "device_id": "edge-0001"}).json(), 120)
        assert reports and reports[0]["device_id"] == "edge-0001"
        pid_host = _run("podman", "inspect", "--format", "{{.State.Pid}}", st.container("agent")).stdout.strip()
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid_host}/status").read_text().splitlines()
                      if line.startswith("VmRSS"))
        print(f"\ncompose stack from nothing (images built) to an agent serving a package: {serving_s:.0f} s; "
              f"agent RSS while serving {rss_kb / 1024:.0f} MB (goal <= 80 MB)")
    finally:
        if os.environ.get("TINYMLOPS_KEEP_STACK"):  # debugging: leave it up (podman-compose -p PROJECT down -v)
            print(f"stack kept: project {st.project}")
        else:
            subprocess.run(["podman-compose", "-p", st.project, "-f", str(REPO / "docker" / "compose.yaml"),
                            "down", "-v"], env=st.env, capture_output=True, timeout=300)
