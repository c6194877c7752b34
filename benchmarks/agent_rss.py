"""Edge agent memory while serving: a real agent process installs a signed package from a real fleet service
(this process, SQLite), reads sensor windows on its stdin (JSON lines written here from the vibration stream, as
a sensor process would) and reports telemetry; its RSS is sampled from /proc while it serves.

    .venv/bin/python benchmarks/agent_rss.py                                  # `tinymlops-agent` of this venv
    .venv/bin/python benchmarks/agent_rss.py --entry cli                      # `tinymlops agent` (typer CLI)
    .venv/bin/python benchmarks/agent_rss.py --format tflite                  # a LiteRT package (target host)
    .venv/bin/python benchmarks/agent_rss.py --agent-bin /opt/agent/bin       # the agent from a slim venv
                                                                              # (pip install ".[agent]")
    .venv/bin/python benchmarks/agent_rss.py --image localhost/tinymlops-agent:test   # the agent image (podman,
                                                                              # host network; root)

Prints the steady RSS (median of samples after the package is installed), the peak (VmHWM), how much of it is
file-backed (shared libraries, shareable between processes) versus anonymous (heap: Python objects, runtime
arenas), the number of Python modules the agent loaded, which of the watched packages it loaded, the largest
mapped libraries, and (--image) the image size. Goal (issue 13): <= 80 MB while serving.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

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


#: packages a serving agent must not load (the unit test tests/unit/test_agent_main.py guards the same set)
WATCH = ("typer", "rich", "click", "pygments", "pydantic", "yaml", "fastapi", "starlette", "sqlalchemy", "mlflow",
         "prefect", "tensorflow", "onnxruntime", "ai_edge_litert")
#: run the agent's entry point and, at exit, print the modules it loaded (one line on stderr)
PROBE = ("import atexit, sys\n"
         "def _report():\n"
         "    top = sorted({{m.split('.')[0] for m in sys.modules}} & set({watch!r}))\n"
         "    sys.stderr.write(f'MODULES {{len(sys.modules)}} {{\",\".join(top)}}\\n')\n"
         "atexit.register(_report)\n"
         "{entry}\n")
ENTRIES = {"agent": "from tinymlops.fleet.agent_main import main; sys.argv[0] = 'tinymlops-agent'; sys.exit(main())",
           "cli": "from cli import main; sys.argv[0] = 'tinymlops'; sys.argv.insert(1, 'agent'); sys.exit(main())"}

#: --breakdown, run by the agent's interpreter: import what a serving agent imports, layer by layer (each layer on
#: top of the previous ones, so shared dependencies count once, where they are first needed), then open the
#: package's model with the project's runner and run it; prints one JSON line per layer (RSS deltas in kB)
LAYERS = (
    ("stdlib the agent uses (asyncio, ssl, json, logging, argparse)", ["asyncio", "ssl", "json", "logging", "argparse"]),
    ("numpy", ["numpy"]),
    ("httpx, httpcore, anyio (asyncio backend)", ["httpx", "httpcore", "anyio._backends._asyncio"]),
    ("cryptography (Ed25519, X25519, AES-GCM)", ["cryptography.hazmat.primitives.asymmetric.ed25519",
                                                 "cryptography.hazmat.primitives.asymmetric.x25519",
                                                 "cryptography.hazmat.primitives.ciphers.aead"]),
    # pydantic in the parts that cost: its Rust core, the model machinery, and what the first model class loads
    ("pydantic-core (the Rust validators' library, decimal, fractions)", ["pydantic_core"]),
    ("pydantic BaseModel, Field, types (the model machinery)", ["pydantic.main", "pydantic.fields", "pydantic.types"]),
    ("pydantic's plugin loader (importlib.metadata, zipfile, csv: the first model loads it)",
     ["pydantic.plugin._loader"]),
    ("PyYAML (tinymlops.config_base; the agent reads the target catalogue)", ["yaml"]),
    ("tinymlops agent modules and their pydantic models (pre-processing, sketch, target, ...)",
     ["tinymlops.fleet.agent_main", "tinymlops.fleet.agent", "tinymlops.fleet.inputs", "tinymlops.fleet.tls",
      "tinymlops.preprocessing", "tinymlops.monitor.sketches", "tinymlops.profile.targets"]),
    ("numpy.ma (np.quantile -> np.unique imports it; the monitor's distance summary)", ["numpy.ma"]),
)
BREAKDOWN = r'''
import importlib, json, sys, time
sys.modules.setdefault("httpx._main", None)
layers, model, runtime, n = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
def rss():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            d[k] = int(v.split()[0])
    return d
def models():
    """Pydantic model classes defined so far (0 before pydantic is imported)."""
    base = getattr(sys.modules.get("pydantic.main"), "BaseModel", None)
    seen, todo = set(), [base] if base else []
    while todo:
        for c in todo.pop().__subclasses__():
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return len(seen)
def emit(name, before, mods, **extra):
    now = rss()
    print(json.dumps({"layer": name, **{k: now[k] - before[k] for k in now}, "modules": len(sys.modules) - mods,
                      "models": models(), **extra}), flush=True)
    return now, len(sys.modules)
prev, mods = rss(), len(sys.modules)
print(json.dumps({"layer": "interpreter", **prev, "modules": mods}), flush=True)
for name, names in layers:
    for m in names:
        importlib.import_module(m)
    prev, mods = emit(name, prev, mods)
importlib.import_module("onnxruntime" if runtime == "onnxruntime" else "ai_edge_litert.interpreter")
prev, mods = emit(f"{runtime} import", prev, mods)
import numpy as np
from tinymlops.runtimes import open_runner
r = open_runner(model, runtime)
x = np.zeros(r.input_shape, np.float32)
r.predict(x[None] if len(r.input_shape) == 1 else x)
prev, mods = emit(f"{runtime} session (the package's model, the project's runner) + 1 inference", prev, mods)
lat = []
for _ in range(n):
    t = time.perf_counter()
    r.predict(x[None] if len(r.input_shape) == 1 else x)
    lat.append(time.perf_counter() - t)
lat.sort()
emit(f"{n} more inferences", prev, mods, median_us=round(lat[len(lat) // 2] * 1e6, 1))
'''
#: --breakdown (onnx): one fresh interpreter per onnxruntime SessionOptions variant: RSS the session and its
#: inferences add on top of `import numpy, onnxruntime`, and the median latency of one inference
SESSION_VARIANTS = {
    "the adapter's (tinymlops.runtimes.onnx)": None,
    "onnxruntime's defaults (a thread per core)": {},
    "1 thread, no spinning": {"threads": 1, "spin": "0"},
    "1 thread, CPU arena off": {"threads": 1, "arena": False},
    "1 thread, memory patterns off": {"threads": 1, "pattern": False},
    "1 thread, arena + patterns off": {"threads": 1, "arena": False, "pattern": False},
    "1 thread, optimisation basic": {"threads": 1, "opt": "ORT_ENABLE_BASIC"},
    "1 thread, optimisation off": {"threads": 1, "opt": "ORT_DISABLE_ALL"},
}
SESSION = r'''
import json, sys, time
import numpy as np
import onnxruntime as ort
variant, model, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def rss():
    return {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in open("/proc/self/status"))
            if k in ("VmRSS", "RssAnon", "RssFile")}
before = rss()
if variant is None:
    from tinymlops.runtimes.onnx import OnnxRunner
    sess = OnnxRunner(model)._sess
else:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    if "threads" in variant:
        o.intra_op_num_threads = o.inter_op_num_threads = variant["threads"]
    if "spin" in variant:
        o.add_session_config_entry("session.intra_op.allow_spinning", variant["spin"])
    o.enable_cpu_mem_arena = variant.get("arena", True)
    o.enable_mem_pattern = variant.get("pattern", True)
    if "opt" in variant:
        o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, variant["opt"])
    sess = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
x = np.ones([d if isinstance(d, int) else 1 for d in inp.shape], np.float32)
lat = []
for _ in range(n):
    t = time.perf_counter()
    sess.run(None, {inp.name: x})
    lat.append(time.perf_counter() - t)
lat.sort()
after = rss()
print(json.dumps({k: after[k] - before[k] for k in after} | {"median_us": round(lat[n // 2] * 1e6, 1)}))
'''


#: --optimize on the host: compile the bytecode of every module the agent's code path loads, as docker/agent-check.py
#: does in the image, into a private cache (PYTHONPYCACHEPREFIX) with the flags the agent then runs with
WARMUP = r'''
import asyncio, contextlib, py_compile, sys
sys.modules.setdefault("httpx._main", None)
import httpx, numpy.fft, numpy.ma
import cryptography.hazmat.backends.openssl
import tinymlops.fleet.agent, tinymlops.fleet.agent_main, tinymlops.fleet.inputs, tinymlops.fleet.tls
import tinymlops.monitor.sketches, tinymlops.preprocessing, tinymlops.profile.targets
import tinymlops.runtimes.onnx, tinymlops.runtimes.tflite
import onnxruntime
async def connect():
    async with httpx.AsyncClient() as c:
        with contextlib.suppress(httpx.HTTPError):
            await c.get("http://127.0.0.1:9/")
asyncio.run(connect())
with contextlib.suppress(ImportError):
    import ai_edge_litert.interpreter
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None) or ""
    if f.endswith(".py"):
        py_compile.compile(f, doraise=True, optimize=sys.flags.optimize)
'''
#: what the agent image's ENV sets (docker/Dockerfile): no docstrings or asserts, no column tables in code objects
OPTIMIZE_ENV = {"PYTHONOPTIMIZE": "2", "PYTHONNODEBUGRANGES": "1"}


def _feed(stdin: Any, stop: threading.Event, interval_s: float) -> None:
    """Write vibration windows as JSON lines, one per interval, until stopped or the agent goes away."""
    from tinymlops.data.config import VibrationParams
    from tinymlops.data.vibration import stream

    for values, label in stream(VibrationParams(), seed=7):
        if stop.is_set():
            break
        try:
            stdin.write(json.dumps({"values": values.round(5).tolist(), "label": label}) + "\n")
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            break
        time.sleep(interval_s)


def _breakdown(bundle: Any, fmt: str, python: list[str], image: bool, n: int, env: dict[str, str]) -> None:
    """Print where the agent's RSS goes (layer by layer) and, for ONNX, what onnxruntime's session options change."""
    runtime = "onnxruntime" if fmt == "onnx" else "tflite"
    with tempfile.TemporaryDirectory(prefix="tinymlops-agent-rss-model-") as tmp:
        Path(tmp).chmod(0o755)
        model = Path(tmp) / f"model.{fmt}"
        model.write_bytes(bundle.artifact)  # a plaintext package: the artifact is the model file
        model.chmod(0o644)
        if image:
            python = ["podman", "run", "--rm", "--network", "none", "-v", f"{tmp}:/model:ro", "--entrypoint",
                      "python", *python]
            model = Path("/model") / model.name

        def run(script: str, *argv: str) -> list[dict[str, Any]]:
            r = subprocess.run([*python, "-c", script, *argv], capture_output=True, text=True, timeout=300, env=env)
            if r.returncode:
                sys.exit(f"breakdown failed: {r.stderr[-2000:]}")
            return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]

        rows = run(BREAKDOWN, json.dumps(LAYERS), str(model), runtime, str(n))
        print(f"\nwhere the RSS goes ({runtime} package; each layer imported on top of the previous ones; MB; "
              "models: pydantic model classes defined so far):")
        print(f"  {'layer':<88} {'RSS':>6} {'anon':>6} {'file':>6} {'modules':>7} {'models':>6}")
        for r in rows:
            sign = "" if r["layer"] == "interpreter" else "+"
            print(f"  {r['layer']:<88} {sign}{r['VmRSS'] / 1024:>5.1f} {sign}{r['RssAnon'] / 1024:>5.1f} "
                  f"{sign}{r['RssFile'] / 1024:>5.1f} {sign}{r['modules']:>6} {r.get('models', 0):>6}"
                  + (f"   median {r['median_us']} us/inference" if "median_us" in r else ""))
        print(f"  {'total':<88} {sum(r['VmRSS'] for r in rows) / 1024:>6.1f}")
        if runtime != "onnxruntime":
            return
        print(f"\nonnxruntime session options: what the session and {n} inferences add on top of `import numpy, "
              "onnxruntime` (MB) and the median latency of one inference")
        for name, variant in SESSION_VARIANTS.items():
            r = run(SESSION, json.dumps(variant), str(model), str(n))[0]
            print(f"  {name:<44} RSS +{r['VmRSS'] / 1024:4.1f} (anon +{r['RssAnon'] / 1024:4.1f}, file "
                  f"+{r['RssFile'] / 1024:4.1f})   {r['median_us']:7.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent-bin", type=Path, default=Path(sys.executable).parent,
                    help="bin directory of the venv whose python runs the agent (default: this venv)")
    ap.add_argument("--entry", choices=sorted(ENTRIES), default="agent",
                    help="agent: `tinymlops-agent` (what devices and the image run); cli: `tinymlops agent`")
    ap.add_argument("--format", choices=("onnx", "tflite"), default="onnx",
                    help="model format of the package: onnx (target host-onnxruntime) or tflite (target host, LiteRT)")
    ap.add_argument("--image", help="run the agent in this image with podman instead (docker/Dockerfile --target "
                    "agent)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to sample once the package is installed")
    ap.add_argument("--top", type=int, default=8, help="how many of the largest mapped files to print")
    ap.add_argument("--optimize", action="store_true",
                    help="host: run the agent as the image does (PYTHONOPTIMIZE=2, PYTHONNODEBUGRANGES=1), its bytecode "
                         "compiled first into a private cache; the image sets these itself")
    ap.add_argument("--breakdown", action="store_true",
                    help="then, in the agent's interpreter (or image): the RSS of each layer the agent imports, the "
                         "runtime's session and inferences (latency), and (onnx) onnxruntime's session options")
    ap.add_argument("--inferences", type=int, default=2000, help="inferences timed per --breakdown measurement")
    args = ap.parse_args()
    exe = args.agent_bin / "python"
    if not args.image and not exe.is_file():
        sys.exit(f"{exe}: no python there (give the bin directory of a venv with the agent extra installed)")
    target = "host-onnxruntime" if args.format == "onnx" else "host"

    root = Path(tempfile.mkdtemp(prefix="tinymlops-agent-rss-"))
    os.environ["TINYMLOPS_HOME"] = str(root / "home")
    os.environ["TINYMLOPS_TARGETS_DIR"] = str(REPO / "src" / "tinymlops" / "profile" / "boards")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import httpx

    from tinymlops import registry
    from tinymlops.fleet import packages, service, store
    from tinymlops.sim import demo_model

    registry.connect()
    version = demo_model.register_demo_model("rss-demo", fmt=args.format)
    bundle = packages.build_package("rss-demo", version, target)
    st = store.open_store(f"sqlite:///{root / 'fleet.db'}")
    token = service.create_operator_token(st)
    srv = service.BackgroundServer(st, poll_interval_s=0.3).start()
    op = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"})
    pid = op.post("/v1/packages", json=bundle.upload_json()).raise_for_status().json()["id"]
    enrol = op.post("/v1/enrolment-tokens", json={"cohort": "rss"}).raise_for_status().json()["tokens"][0]
    op.put("/v1/desired-state", json={"package_id": pid, "cohort": "rss"}).raise_for_status()
    opts = ["--server", srv.url, "--device-id", "rss-1", "--target", target, "--report-interval", "1",
            "--inference-interval", "0.05", "--input", "-"]
    probe = PROBE.format(watch=WATCH, entry=ENTRIES[args.entry])
    pub = root / "device-keys"  # what a device is provisioned with: the public key alone, readable by the agent
    pub.mkdir(mode=0o755)
    (pub / "package_signing.pub").write_bytes(packages.default_public_key_path().read_bytes())
    (pub / "package_signing.pub").chmod(0o644)
    root.chmod(0o755)
    cmd = [str(exe), "-c", probe, *opts] if not args.image else [
        "podman", "run", "--rm", "-i", "--name", "tinymlops-agent-rss", "--network", "host", "-e",
        "TINYMLOPS_ENROLMENT_TOKEN", "-v", f"{pub}:/keys:ro", "--entrypoint", "python", args.image, "-c", probe,
        *opts, "--state-dir", "/data/device/rss-1", "--trusted-key", "/keys/package_signing.pub"]
    agent_env = {**os.environ, "TINYMLOPS_ENROLMENT_TOKEN": enrol}
    if args.optimize and not args.image:
        pycache = tempfile.mkdtemp(prefix="tinymlops-agent-rss-pycache-")
        atexit.register(shutil.rmtree, pycache, True)
        agent_env.update(OPTIMIZE_ENV, PYTHONPYCACHEPREFIX=pycache)
        agent_env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([str(exe), "-c", WARMUP], env=agent_env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd, env=agent_env, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agent_pid = proc.pid
    stop = threading.Event()
    threading.Thread(target=_feed, args=(proc.stdin, stop, 0.05), daemon=True).start()
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
        stop.set()
        proc.terminate()  # SIGTERM: the agent stops after its current step (exit 143)
        err = proc.communicate(timeout=30)[1] or ""
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    modules = next((ln.split(" ", 2)[1:] for ln in err.splitlines() if ln.startswith("MODULES ")), None)
    med = {k: statistics.median(s[k] for s in samples) / 1024 for k in samples[-1]}
    where = f"image {args.image}" if args.image else f"{exe} ({'tinymlops-agent' if args.entry == 'agent' else 'tinymlops agent'})"
    print(f"agent: {where}, {args.format} package for target {target}, input: JSON lines on stdin")
    if args.image:
        size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", args.image],
                              capture_output=True, text=True, check=True).stdout.strip()
        print(f"image size {int(size) / 1e6:.0f} MB (goal <= 250 MB)")
    print(f"package installed and serving after {installed_s:.1f} s; sampled {len(samples)} times over "
          f"{args.seconds:.0f} s")
    print(f"RSS while serving (median) {med['VmRSS']:.1f} MB (goal <= 80 MB): file-backed {med['RssFile']:.1f} MB, "
          f"anonymous {med['RssAnon']:.1f} MB; peak (VmHWM) {samples[-1]['VmHWM'] / 1024:.1f} MB")
    if modules:
        loaded = modules[1].strip() if len(modules) > 1 else ""
        print(f"Python modules loaded {modules[0]}; of {', '.join(WATCH)}: {loaded or 'none'}")
    print("largest resident mappings (MB): " + ", ".join(f"{n} {kb / 1024:.1f}" for n, kb in libs))
    if args.breakdown:
        _breakdown(bundle, args.format, [args.image] if args.image else [str(exe)], bool(args.image), args.inferences,
                   agent_env)


if __name__ == "__main__":
    main()
