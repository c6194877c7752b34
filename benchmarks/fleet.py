"""P5: telemetry ingestion of the fleet service on loopback.

Starts ``tinymlops fleet serve`` (one uvicorn process, SQLite by default or ``--db URL``), enrols ``--devices``
devices through the real enrolment API, deploys a signed demo package, then every device posts telemetry
sketches at a fixed rate (open loop: devices report on their schedule whether or not the server keeps up, as a
real fleet does) for ``--seconds``. Prints acknowledged reports/s, request latency p50/p95/p99/max, errors, and
verifies the stored count. Quality bar: >= 1,000 reports/s from >= 500 devices with p99 < 100 ms on 2 cores.

    .venv/bin/python benchmarks/fleet.py [--devices 500] [--rate 1200] [--seconds 15] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """Return the user+system CPU seconds of a process and its children (Linux /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def make_sketches(reference: object, n: int, seed: int) -> list[dict]:
    """Build realistic sketches (each from 50 inferences on reference-like features)."""
    from tinymlops.monitor.sketches import SketchBuilder

    rng = np.random.default_rng(seed)
    nf = len(reference.features)  # type: ignore[attr-defined]
    nc = len(reference.class_names)  # type: ignore[attr-defined]
    out = []
    for _ in range(n):
        b = SketchBuilder(reference)  # type: ignore[arg-type]
        t = time.time()
        for i in range(50):
            p = rng.dirichlet(np.ones(nc))
            b.add(rng.normal(size=nf), p, latency_ms=float(rng.gamma(2, 0.5)), timestamp=t + i,
                  energy_uj=5.0, memory_bytes=2048)
        out.append(b.flush().model_dump())
    return out


class Conn:
    """A minimal keep-alive HTTP/1.1 client connection (the load generator must cost less than the server)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw.split(b" ", 2)[1])
        length = 0
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(server: str, creds: list[tuple[str, str]], package_id: str, sketches: list[dict], rate: float,
               seconds: float, warmup_s: float = 0.0, server_pid: int | None = None,
               marks: dict | None = None) -> tuple[list[float], int, int]:
    """Run the devices for warmup + seconds; return latencies, errors and requests of the measured part."""
    host, port = server.split("//")[1].split(":")
    n = len(creds)
    period = n / rate  # each device reports every `period` seconds
    latencies: list[float] = []
    errors = 0
    sent = 0
    bodies = [json.dumps(s).encode() for s in sketches]
    conns = [Conn(host, int(port)) for _ in range(n)]  # one keep-alive connection per device
    t_measure = time.perf_counter() + warmup_s  # connections open and caches fill during the warm-up
    t_end = t_measure + seconds

    async def device(i: int, did: str, cred: str) -> None:
        nonlocal errors, sent
        headers = {"Authorization": f"Bearer {cred}"}
        seq = 0
        nxt = time.perf_counter() + random.uniform(0, period)
        while True:
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            if time.perf_counter() >= t_end:
                return
            seq += 1
            body = b'{"seq":%d,"package_id":"%s","sketch":%s}' % (seq, package_id.encode(),
                                                                  bodies[(i + seq) % len(bodies)])
            t0 = time.perf_counter()
            try:
                ok = await conns[i].post(f"/v1/devices/{did}/telemetry", body, headers) == 202
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok, conns[i] = False, Conn(host, int(port))
            if t0 >= t_measure:
                latencies.append((time.perf_counter() - t0) * 1000)
                sent += 1
                errors += not ok
            nxt += period

    async def mark() -> None:  # CPU counters at the start of the measured part
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        if marks is not None:
            marks["loader"] = time.process_time()
            marks["server"] = cpu_seconds(server_pid) if server_pid else 0.0

    try:
        await asyncio.gather(mark(), *(device(i, d, c) for i, (d, c) in enumerate(creds)))
    finally:
        for c in conns:
            await c.close()
    return latencies, errors, sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--rate", type=float, default=1200.0, help="offered reports/s over the whole fleet")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured duration")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite file in a temp dir)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (fleet serve --workers)")
    args = ap.parse_args()

    import httpx

    from tinymlops.fleet import packages
    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.sim import demo_model
    from tinymlops.sim.command import product_command

    tmp = Path(tempfile.mkdtemp(prefix="tinymlops-bench-fleet-"))
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp / "home"), "TINYMLOPS_TARGETS_DIR": str(tmp / "targets")}
    (tmp / "targets").mkdir()
    (tmp / "targets" / "gw.yaml").write_text("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\nsram_bytes: 4000000000\nflash_bytes: 32000000000\nactive_power_mw: 3000\n")
    db = args.db or f"sqlite:///{tmp / 'fleet.db'}"
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*product_command("fleet", "serve"), "--db", db, "--port", str(port), "--targets-dir", str(tmp / "targets"),
                             "--workers", str(args.workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        token_file = tmp / "home" / "fleet" / "operator-token"
        for _ in range(300):
            try:
                if token_file.is_file() and httpx.get(f"{server}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        op = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {token_file.read_text().strip()}"},
                          timeout=60)
        manifest = demo_model.build_demo_package(tmp / "pkg", model_name="bench")
        key = packages.signing_key(tmp)
        bundle = packages.sign({**manifest, "model_version": "1", "target": "gw", "runtime": "onnxruntime",
                                "schema": packages.SCHEMA}, (tmp / "pkg" / "model.onnx").read_bytes(), key)
        pid = op.post("/v1/packages", json=bundle.upload_json()).json()["id"]
        tokens = op.post("/v1/enrolment-tokens", json={"cohort": "bench", "count": args.devices}).json()["tokens"]
        t0 = time.perf_counter()
        creds = []
        for i, tok in enumerate(tokens):
            r = op.post("/v1/enrol", json={"enrolment_token": tok, "device_id": f"bench-{i:05d}", "target": "gw"})
            creds.append((f"bench-{i:05d}", r.json()["credential"]))
        enrol_s = time.perf_counter() - t0
        op.put("/v1/desired-state", json={"package_id": pid, "cohort": "bench"}).raise_for_status()
        sketches = make_sketches(ReferenceProfile.model_validate(manifest["reference"]), 64, 0)
        body_bytes = len(json.dumps({"seq": 1, "package_id": pid, "sketch": sketches[0]}))

        marks: dict = {}
        t0 = time.perf_counter()
        lat, errors, sent = asyncio.run(load(server, creds, pid, sketches, args.rate, args.seconds, args.warmup,
                                             proc.pid, marks))
        wall = time.perf_counter() - t0 - args.warmup
        cpu_loader = time.process_time() - marks["loader"]
        cpu_server = cpu_seconds(proc.pid) - marks["server"]
        stored = sum(len(op.get("/v1/telemetry", params={"model_name": "bench", "device_id": d,
                                                         "limit": 10000}).json()) for d, _ in creds[:20])
        a = np.asarray(lat)
        ok = sent - errors
        print(f"fleet ingestion benchmark  db={'sqlite (default)' if args.db is None else args.db.split(':')[0]}  "
              f"cores={os.cpu_count()}")
        print(f"  devices                     {args.devices}  (enrolled via API in {enrol_s:.1f} s, "
              f"{args.devices / enrol_s:.0f} enrolments/s)")
        print(f"  report body                 {body_bytes} bytes (sketch of 50 inferences, "
              f"{len(manifest['reference']['features'])} features)")
        print(f"  offered rate                {args.rate:.0f} reports/s for {args.seconds:.0f} s "
              f"(after {args.warmup:.0f} s warm-up)")
        print(f"  acknowledged                {ok} reports in {wall:.1f} s = {ok / wall:.0f} reports/s")
        print(f"  errors                      {errors}")
        print(f"  latency ms p50/p95/p99/max  {np.percentile(a, 50):.1f} / {np.percentile(a, 95):.1f} / "
              f"{np.percentile(a, 99):.1f} / {a.max():.1f}")
        print(f"  server CPU                  {cpu_server / wall:.2f} cores, {cpu_server / max(ok, 1) * 1000:.2f} ms "
              "per report")
        print(f"  load-generator CPU          {cpu_loader / wall:.2f} cores (shares the 2 cores with the server)")
        print(f"  stored check (20 devices)   {stored} rows")
        bar = ok / wall >= 1000 and args.devices >= 500 and np.percentile(a, 99) < 100 and errors == 0
        print(f"  P5 (>=1000/s, >=500 devices, p99<100 ms): {'PASS' if bar else 'FAIL'}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
