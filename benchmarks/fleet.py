"""P5: telemetry ingestion of the fleet service on loopback (SQLite or PostgreSQL, 1..N workers).

Starts ``tinymlops fleet serve`` (SQLite by default or ``--db URL``, ``--workers N``), sets a signed demo package
as the desired state of a new cohort, enrols ``--devices`` devices into it through the real enrolment API, then
every device posts telemetry sketches at a fixed rate on its own keep-alive connection (open loop: devices report
on their schedule whether or not the server keeps up, as a real fleet does) for ``--seconds``. Prints
acknowledged reports/s, request latency p50/p95/p99/max, errors, the CPU of the server processes, of the
database server (a local PostgreSQL found by its port) and of the load generator, what the rest of the machine
was busy with meanwhile, and checks in the database that every acknowledged report was stored.
Quality bar (P5): >= 2,000 acknowledged reports/s from 10,000 devices on PostgreSQL with ``--workers 2``,
p99 < 100 ms, 0 errors, every acknowledged report stored, on 2 cores with the load generator.

    .venv/bin/python benchmarks/fleet.py [--devices 500] [--rate 1200] [--seconds 15] [--db URL] [--workers 2]
    python tests/integration/_postgres.py &   # a throw-away PostgreSQL; prints its URL for --db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """Return the user+system CPU seconds of a process and its children, live or exited (Linux /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid):  # its own time plus that of the children it has reaped
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        elif fields[1] == str(pid):
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


def db_server_pid(url: str) -> int | None:
    """Return the PID of a local PostgreSQL server listening on the URL's port (its backends are its children)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("postgresql") or u.host not in (None, "127.0.0.1", "localhost", "::1"):
        return None
    port = str(u.port or 5432)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and (b"-p" in argv and argv[argv.index(b"-p") + 1:][:1] ==
                                                        [port.encode()] or port == "5432"):
            return int(cmdline.parent.name)
    return None


def machine_busy_s() -> float:
    """Return the CPU seconds all cores spent busy since boot (/proc/stat), to see what else ran meanwhile."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Conn:
    """A minimal keep-alive HTTP/1.1 client connection (the load generator must cost less than the server).

    Like httpx/httpcore, an idle connection is reused only within ``keepalive_s`` and only if the server has not
    closed it meanwhile; otherwise a new one is opened (counted in ``opened``).
    """

    opened = 0

    def __init__(self, host: str, port: int, keepalive_s: float) -> None:
        self.host, self.port, self.keepalive_s = host, port, keepalive_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.idle_since = 0.0

    async def post(self, path: str, body: bytes, headers: bytes) -> int:
        now = time.monotonic()
        if self.writer is not None and (now - self.idle_since > self.keepalive_s or self.reader is None
                                        or self.reader.at_eof()):
            self.writer.close()
            self.writer = None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            Conn.opened += 1
        assert self.reader is not None
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n%s\r\n%s" % (path.encode(), self.host.encode(), len(body),
                                                                   headers, body))
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            status = int(raw.split(b" ", 2)[1])
            length = 0
            for line in raw.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await self.reader.readexactly(length)
        except BaseException:
            self.writer.close()
            self.writer = None
            raise
        self.idle_since = time.monotonic()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(server: str, creds: list[tuple[str, str]], package_id: str, sketches: list[dict], rate: float,
               seconds: float, warmup_s: float = 0.0, marks: dict | None = None, pids: dict | None = None,
               keepalive_s: float = 10.0) -> tuple[list[float], int, int, set[tuple[str, int]]]:
    """Run the devices for warmup + seconds; return latencies, errors, requests and acknowledged (device, seq) of
    the measured part."""
    host, port = server.split("//")[1].split(":")
    n = len(creds)
    period = n / rate  # each device reports every `period` seconds
    latencies: list[float] = []
    acked: set[tuple[str, int]] = set()
    errors = 0
    sent = 0
    bodies = [json.dumps(s).encode() for s in sketches]
    t_measure = time.perf_counter() + warmup_s  # connections open and caches fill during the warm-up
    t_end = t_measure + seconds

    async def device(i: int, did: str, cred: str) -> None:
        nonlocal errors, sent
        conn = Conn(host, int(port), keepalive_s)  # one connection per device, as real devices have
        headers = b"Authorization: Bearer %s\r\n" % cred.encode()
        path = f"/v1/devices/{did}/telemetry"
        seq = 0
        nxt = time.perf_counter() + random.uniform(0, period)
        try:
            while True:
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
                if time.perf_counter() >= t_end:
                    return
                seq += 1
                body = b'{"seq":%d,"package_id":"%s","sketch":%s}' % (seq, package_id.encode(),
                                                                      bodies[(i + seq) % len(bodies)])
                t0 = time.perf_counter()
                try:
                    ok = await conn.post(path, body, headers) == 202
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                if t0 >= t_measure:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    sent += 1
                    errors += not ok
                    if ok:
                        acked.add((did, seq))
                nxt += period
        finally:
            await conn.close()

    async def mark() -> None:  # CPU counters at the start and end of the measured part
        for at, key in ((t_measure, "start"), (t_end, "end")):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if marks is not None:
                marks[key] = cpu_marks(pids or {})

    await asyncio.gather(mark(), *(device(i, d, c) for i, (d, c) in enumerate(creds)))
    return latencies, errors, sent, acked


def cpu_marks(pids: dict[str, int | None]) -> dict[str, float]:
    """Return CPU seconds so far of the load generator, the server and database trees, and the whole machine."""
    return {"loader": time.process_time(), "machine": machine_busy_s(),
            **{k: cpu_seconds(p) if p else 0.0 for k, p in pids.items()}}


async def enrol_all(server: str, op_headers: dict[str, str], tokens: list[str], prefix: str,
                    concurrency: int = 8) -> list[tuple[str, str]]:
    """Enrol one device per token through the API (a few at a time, as devices coming online do)."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=server, headers=op_headers, timeout=120) as client:
        async def one(i: int, tok: str) -> tuple[str, str]:
            did = f"{prefix}-{i:05d}"
            async with sem:
                r = await client.post("/v1/enrol", json={"enrolment_token": tok, "device_id": did, "target": "gw"})
            r.raise_for_status()
            return did, r.json()["credential"]

        return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens))))


def stored_reports(db: str, prefix: str) -> set[tuple[str, int]]:
    """Return every (device_id, seq) stored for this run's devices, read straight from the database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT device_id, seq FROM telemetry WHERE device_id LIKE :p"),
                                {"p": f"{prefix}-%"})
            return {(d, int(q)) for d, q in rows}
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--rate", type=float, default=1200.0, help="offered reports/s over the whole fleet")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured duration")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite file in a temp dir)")
    ap.add_argument("--workers", type=int, default=1, help="server processes (fleet serve --workers)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--keepalive", type=float, default=10.0,
                    help="seconds a device keeps an idle connection (the server keeps it longer)")
    ap.add_argument("--bar-rate", type=float, default=2000.0, help="acknowledged reports/s the bar asks for")
    args = ap.parse_args()

    import httpx

    from tinymlops.fleet import packages
    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.sim import demo_model
    from tinymlops.sim.command import product_command

    tmp = Path(tempfile.mkdtemp(prefix="tinymlops-bench-fleet-"))
    prefix = f"b{os.urandom(3).hex()}"  # this run's device ids and cohort (a --db may hold earlier runs)
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp / "home"), "TINYMLOPS_TARGETS_DIR": str(tmp / "targets")}
    (tmp / "targets").mkdir()
    (tmp / "targets" / "gw.yaml").write_text("name: gw\nruntime: onnxruntime\ncore: cortex-a72\nclock_mhz: 1500\n"
                                             "sram_bytes: 4000000000\nflash_bytes: 32000000000\n"
                                             "active_power_mw: 3000\n")
    db = args.db or f"sqlite:///{tmp / 'fleet.db'}"
    port = args.port or free_port()
    server = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*product_command("fleet", "serve"), "--db", db, "--port", str(port), "--targets-dir",
                             str(tmp / "targets"), "--workers", str(args.workers)],
                            # a service of its own, as deployed: not in the load generator's session (and so not in
                            # its scheduling group under Linux's autogroup)
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        token_file = tmp / "home" / "fleet" / "operator-token"
        for _ in range(600):
            try:
                if token_file.is_file() and httpx.get(f"{server}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        op_headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        op = httpx.Client(base_url=server, headers=op_headers, timeout=120)
        manifest = demo_model.build_demo_package(tmp / "pkg", model_name="bench")
        key = packages.signing_key(tmp)
        bundle = packages.sign({**manifest, "model_version": "1", "target": "gw", "runtime": "onnxruntime",
                                "schema": packages.SCHEMA}, (tmp / "pkg" / "model.onnx").read_bytes(), key)
        pid = op.post("/v1/packages", json=bundle.upload_json()).json()["id"]
        # the cohort's desired package is set first: each device is assigned it as it enrols
        op.put("/v1/desired-state", json={"package_id": pid, "cohort": prefix}).raise_for_status()
        tokens: list[str] = []
        while len(tokens) < args.devices:
            tokens += op.post("/v1/enrolment-tokens", json={"cohort": prefix, "count": min(
                10000, args.devices - len(tokens))}).json()["tokens"]
        print(f"enrolling {args.devices} devices ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        creds = asyncio.run(enrol_all(server, op_headers, tokens, prefix))
        enrol_s = time.perf_counter() - t0
        sketches = make_sketches(ReferenceProfile.model_validate(manifest["reference"]), 64, 0)
        body_bytes = len(json.dumps({"seq": 1, "package_id": pid, "sketch": sketches[0]}))

        pids = {"server": proc.pid, "db": db_server_pid(db)}
        marks: dict = {}
        print(f"load: {args.rate:.0f} reports/s for {args.warmup:.0f} + {args.seconds:.0f} s", file=sys.stderr,
              flush=True)
        try:  # the devices' side on uvloop when installed (uvicorn's): a cheaper load generator on shared cores
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            lat, errors, sent, acked = runner.run(load(server, creds, pid, sketches, args.rate, args.seconds,
                                                       args.warmup, marks, pids, args.keepalive))
        wall = args.seconds  # reports sent in the measured part (the last ones finish a little later)
        cpu = {k: marks["end"][k] - marks["start"][k] for k in marks["end"]}
        stored = stored_reports(db, prefix)
        lost = len(acked - stored)
        a = np.asarray(lat)
        ok = sent - errors
        p99 = float(np.percentile(a, 99))
        print(f"fleet ingestion benchmark  db={'sqlite (default)' if args.db is None else args.db.split(':')[0]}  "
              f"workers={args.workers}  cores={os.cpu_count()}")
        print(f"  devices                     {args.devices}  (enrolled via API in {enrol_s:.1f} s, "
              f"{args.devices / enrol_s:.0f} enrolments/s)")
        print(f"  report body                 {body_bytes} bytes (sketch of 50 inferences, "
              f"{len(manifest['reference']['features'])} features)")
        print(f"  offered rate                {args.rate:.0f} reports/s for {args.seconds:.0f} s "
              f"(after {args.warmup:.0f} s warm-up), each device every {args.devices / args.rate:.1f} s")
        print(f"  acknowledged                {ok} reports in {wall:.1f} s = {ok / wall:.0f} reports/s")
        print(f"  errors                      {errors}")
        print(f"  latency ms p50/p95/p99/max  {np.percentile(a, 50):.1f} / {np.percentile(a, 95):.1f} / "
              f"{p99:.1f} / {a.max():.1f}")
        print(f"  connections opened          {Conn.opened} (keep-alive {args.keepalive:.0f} s)")
        print(f"  server CPU                  {cpu['server'] / wall:.2f} cores, "
              f"{cpu['server'] / max(ok, 1) * 1000:.2f} ms per report")
        if pids["db"]:
            print(f"  database server CPU         {cpu['db'] / wall:.2f} cores, "
                  f"{cpu['db'] / max(ok, 1) * 1000:.2f} ms per report")
        print(f"  load-generator CPU          {cpu['loader'] / wall:.2f} cores, "
              f"{cpu['loader'] / max(ok, 1) * 1000:.2f} ms per report (shares the cores with the server; "
              f"{'uvloop' if loop_factory else 'asyncio'})")
        ours = (cpu["server"] + cpu["db"] + cpu["loader"]) / max(ok, 1)
        print(f"  CPU per report, all parts   {ours * 1000:.2f} ms (server + database + load generator): "
              f"{os.cpu_count() or 1:d} idle cores would ingest at most {(os.cpu_count() or 1) / ours:.0f} reports/s")
        others = cpu["machine"] - cpu["server"] - cpu["db"] - cpu["loader"]
        print(f"  rest of the machine         {others / wall:.2f} cores busy with other processes "
              f"(load average {os.getloadavg()[0]:.1f})")
        print(f"  stored                      {len(stored & acked)} of {len(acked)} acknowledged reports found "
              f"in the database ({lost} missing)")
        bar = ok / wall >= args.bar_rate and p99 < 100 and errors == 0 and lost == 0
        print(f"  P5 (>= {args.bar_rate:.0f}/s acknowledged, p99 < 100 ms, 0 errors, every acknowledged report "
              f"stored; {args.devices} devices): {'PASS' if bar else 'FAIL'}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
