"""Edge agent memory while serving: a real `tinymlops agent` process installs a signed ONNX package from a real
fleet service (this process, SQLite) and reports telemetry; its RSS is sampled from /proc while it serves.

    .venv/bin/python benchmarks/agent_rss.py                                 # the agent from this venv
    .venv/bin/python benchmarks/agent_rss.py --agent-bin /opt/agent/bin      # the agent from a slim venv
                                                                             # (pip install ".[agent]")
    .venv/bin/python benchmarks/agent_rss.py --image localhost/tinymlops-agent:test   # the agent image (podman,
                                                                             # host network; root)

Prints the steady RSS (median of samples after the package is installed), the peak (VmHWM), how much of it is
file-backed (shared libraries, shareable between processes) versus anonymous (heap: Python objects, runtime
arenas), and the largest mapped libraries. Goal (issue 13): <= 80 MB while serving. The agent of this venv sees
a Python with TensorFlow etc. installed but imports only what the agent needs; a slim venv is what a device runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def _libraries(pid: int, top: int) -> list[tuple[str, int]]:
    """Resident kB per mapped file (from /proc/PID/smaps)."""
    rss: Counter[str] = Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
            name = parts[5] if len(parts) >= 6 else "[anon]"
        elif parts[0] == "Rss:":
            rss[Path(name).name if name.startswith("/") else name] += int(parts[1])
    return rss.most_common(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent-bin", type=Path, default=Path(sys.executable).parent,
                    help="bin directory of the venv whose `tinymlops` runs the agent (default: this venv)")
    ap.add_argument("--image", help="run the agent in this image with podman instead (docker/Dockerfile --target "
                    "agent)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to sample once the package is installed")
    ap.add_argument("--top", type=int, default=8, help="how many of the largest mapped files to print")
    args = ap.parse_args()
    exe = args.agent_bin / "tinymlops"
    if not args.image and not exe.is_file():
        sys.exit(f"{exe}: no tinymlops command there (install the agent extra into that venv)")

    root = Path(tempfile.mkdtemp(prefix="tinymlops-agent-rss-"))
    os.environ["TINYMLOPS_HOME"] = str(root / "home")
    os.environ["TINYMLOPS_TARGETS_DIR"] = str(REPO / "src" / "tinymlops" / "profile" / "boards")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import httpx

    from tinymlops import registry
    from tinymlops.fleet import packages, service, store
    from tinymlops.sim import demo_model

    registry.connect()
    version = demo_model.register_demo_model("rss-demo")
    bundle = packages.build_package("rss-demo", version, "host-onnxruntime")
    st = store.open_store(f"sqlite:///{root / 'fleet.db'}")
    token = service.create_operator_token(st)
    srv = service.BackgroundServer(st, poll_interval_s=0.3).start()
    op = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"})
    pid = op.post("/v1/packages", json=bundle.upload_json()).raise_for_status().json()["id"]
    enrol = op.post("/v1/enrolment-tokens", json={"cohort": "rss"}).raise_for_status().json()["tokens"][0]
    op.put("/v1/desired-state", json={"package_id": pid, "cohort": "rss"}).raise_for_status()
    opts = ["--server", srv.url, "--device-id", "rss-1", "--target", "host-onnxruntime", "--report-interval", "1",
            "--inference-interval", "0.05"]
    pub = root / "device-keys"  # what a device is provisioned with: the public key alone, readable by the agent
    pub.mkdir(mode=0o755)
    (pub / "package_signing.pub").write_bytes(packages.default_public_key_path().read_bytes())
    (pub / "package_signing.pub").chmod(0o644)
    root.chmod(0o755)
    cmd = [str(exe), "agent", *opts] if not args.image else [
        "podman", "run", "--rm", "--name", "tinymlops-agent-rss", "--network", "host", "-e",
        "TINYMLOPS_ENROLMENT_TOKEN", "-v", f"{pub}:/keys:ro", args.image, *opts,
        "--state-dir", "/data/device/rss-1", "--trusted-key", "/keys/package_signing.pub"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TINYMLOPS_ENROLMENT_TOKEN": enrol},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agent_pid = proc.pid
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                sys.exit(f"agent exited {proc.returncode}: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            devs = op.get("/v1/devices").raise_for_status().json()
            dev = next((d for d in devs if d["id"] == "rss-1"), None)
            if dev and dev.get("current_package_id") == pid:
                break
            if time.monotonic() - t0 > 120:
                sys.exit("agent did not install the package within 120 s")
            time.sleep(0.3)
        installed_s = time.monotonic() - t0
        if args.image:  # the agent's process on the host, as the container runtime started it
            agent_pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", "tinymlops-agent-rss"],
                                           capture_output=True, text=True, check=True).stdout)
        samples, end = [], time.monotonic() + args.seconds
        while time.monotonic() < end:
            samples.append(_status(agent_pid))
            time.sleep(0.5)
        libs = _libraries(agent_pid, args.top)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        srv.stop()
    med = {k: statistics.median(s[k] for s in samples) / 1024 for k in samples[-1]}
    print(f"agent: {'image ' + args.image if args.image else exe}")
    print(f"package installed and serving after {installed_s:.1f} s; sampled {len(samples)} times over "
          f"{args.seconds:.0f} s")
    print(f"RSS while serving (median) {med['VmRSS']:.1f} MB (goal <= 80 MB): file-backed {med['RssFile']:.1f} MB, "
          f"anonymous {med['RssAnon']:.1f} MB; peak (VmHWM) {samples[-1]['VmHWM'] / 1024:.1f} MB")
    print("largest resident mappings (MB): " + ", ".join(f"{n} {kb / 1024:.1f}" for n, kb in libs))


if __name__ == "__main__":
    main()
