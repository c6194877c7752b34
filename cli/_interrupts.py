"""SIGINT/SIGTERM for long commands: end the process's MLflow runs KILLED, stop child processes, exit 130/143.

Why not KeyboardInterrupt: Prefect runs tasks (TensorFlow training) in worker threads that cannot be interrupted,
swaps in its own SIGTERM handler during flow runs, and after its temporary API server is gone keeps retrying a
websocket forever. So a watcher thread learns about the signal from the wakeup fd (written by CPython's C-level
handler, whatever Python handler is installed and whatever the main thread is doing) and then, within ~8 s:

1. silences stdout/stderr (unwinding threads would print tracebacks) and keeps a copy of stderr for one line;
2. ends every MLflow run this process opened ``KILLED``; versions registered from a run still open are tagged
   ``tinymlops.incomplete=interrupted`` (kept, not deleted: an alias may already point at one); from then on no
   thread can open, end or register anything (see :func:`tinymlops.hygiene.begin_shutdown`);
3. stops Prefect's temporary server and every other child process (SIGTERM, then SIGKILL after 2 s);
4. exits with ``os._exit(128 + signal)``: worker threads cannot be joined, so the interpreter must not try.

A second SIGINT exits at once (children are SIGKILLed first). Repeated SIGTERMs are ignored while cleaning up:
Prefect re-sends SIGTERM to the process after its own handler ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 8.0  # hard limit from the first signal to exit, whatever hangs
MLFLOW_BUDGET_S = 4.5  # ending runs in a remote store may hang on HTTP timeouts: give up after this
CHILD_WAIT_S = 2.0  # children get SIGTERM, then SIGKILL after this


def _children_of(pid: int) -> list[int]:
    """Return every live descendant of a process, found through /proc (Linux; [] elsewhere)."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = (Path(entry.path) / "stat").read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        out += kids
        frontier = kids
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, sig)


def _reap(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            os.waitpid(p, os.WNOHANG)


def stop_children(wait_s: float = CHILD_WAIT_S) -> int:
    """Stop Prefect's temporary server and every other descendant process; return how many there were."""
    server_mod = sys.modules.get("prefect.server.api.server")
    known = []
    if server_mod is not None:  # Prefect's own handle on its temporary API server (a uvicorn subprocess)
        for inst in list(getattr(server_mod.SubprocessASGIServer, "_instances", {}).values()):
            if getattr(inst, "server_process", None) is not None:
                known.append(inst.server_process.pid)
    pids = sorted(set(_children_of(os.getpid())) | set(known))
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _reap(pids)
        if not any(_exists(p) for p in pids):
            break
        time.sleep(0.05)
    else:
        _signal_all(pids, signal.SIGKILL)
        _reap(pids)
    return len(pids)


def _exists(pid: int) -> bool:
    if not Path("/proc").is_dir():  # no /proc (macOS): a signal 0 tells whether the pid is there
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return state.rsplit(")", 1)[1].split()[0] != "Z"


class Interrupts:
    """Process-wide SIGINT/SIGTERM handling for one long command (install once, from the main thread)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self._lock = threading.Lock()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        self._err_fd = 2
        self._prev: dict[int, Any] = {}
        self._prev_wakeup = -1

    def install(self) -> None:
        for sig in HANDLED:
            self._prev[sig] = signal.signal(sig, self._python_handler)
        self._prev_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="tinymlops-interrupts", daemon=True).start()

    def uninstall(self) -> None:
        """Restore the previous handlers (only when no signal arrived; then the process is exiting anyway)."""
        signal.set_wakeup_fd(self._prev_wakeup)
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"\0")  # stops the watcher, which closes the read end
            os.close(self._wfd)

    def _python_handler(self, signum: int, _frame: Any) -> None:
        # CPython wrote the signal number to the wakeup fd before calling this; if someone replaced our fd the
        # watcher never saw it, so handle it here
        current = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        if current != self._wfd:
            if current != -1:
                signal.set_wakeup_fd(current, warn_on_full_buffer=False)  # keep the other owner's fd
            self.on_signal(signum)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._rfd, 64)
            except OSError:
                return
            for signum in data:
                if signum == 0:
                    os.close(self._rfd)
                    return
                if signum in HANDLED:
                    self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        """First signal: clean up in a thread and exit; a second SIGINT: exit now."""
        with self._lock:
            first = self.first
            if first is None:
                self.first = signum
                threading.Timer(GRACE_S, self._exit, (128 + signum, "cleanup took too long")).start()
                threading.Thread(target=self._cleanup, args=(signum,), name="tinymlops-cleanup").start()
                return
        if signum == signal.SIGINT:
            _signal_all(_children_of(os.getpid()), signal.SIGKILL)
            self._exit(128 + first, "interrupted again: exiting now")

    def _silence(self) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        self._err_fd = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    def _cleanup(self, signum: int) -> None:
        name = signal.Signals(signum).name
        with contextlib.suppress(OSError):
            self._silence()
        notes: list[str] = []

        def end_runs() -> None:
            if "tinymlops.registry" not in sys.modules:  # nothing opened a run; importing MLflow now would hold
                return  # the GIL for seconds and delay a second Ctrl-C
            from tinymlops import registry

            snap = registry.end_open_runs("KILLED", "interrupted", shutdown=True)
            if snap.runs:
                notes.append(f"{len(snap.runs)} MLflow run(s) ended KILLED")
            if snap.versions:
                notes.append(f"version(s) {', '.join(f'{m}/{v}' for m, v in snap.versions)} tagged "
                             "tinymlops.incomplete=interrupted")

        worker = threading.Thread(target=end_runs, name="tinymlops-end-runs", daemon=True)
        worker.start()
        worker.join(MLFLOW_BUDGET_S)
        if worker.is_alive():
            notes.append("the MLflow store did not answer: run `tinymlops doctor --fix` to end its runs")
        n = stop_children()
        if n:
            notes.append(f"stopped {n} child process(es)")
        self._exit(128 + signum, f"interrupted ({name})" + (": " + "; ".join(notes) if notes else ""))

    def _exit(self, code: int, message: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._err_fd, (message + "\n").encode())
        os._exit(code)


_active: Interrupts | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[Interrupts | None]:
    """Handle SIGINT/SIGTERM as described in the module docstring while the block runs (main thread only)."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield _active  # nested (or not installable here): the outer scope handles signals
        return
    _active = handler = Interrupts()
    handler.install()
    try:
        yield handler
    finally:
        if handler.first is not None:  # cleanup owns the process now: its os._exit ends it
            threading.Event().wait()
        handler.uninstall()
        _active = None
