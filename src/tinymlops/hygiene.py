"""Run hygiene: who owns an MLflow run, which runs this process has open, and closing runs a crash left RUNNING.

Every run the registry opens carries owner tags (host, pid, the pid's start time), so a later ``tinymlops doctor``
can tell a run of a live process from one whose process died (SIGKILL, power loss) and end only the latter.
Within a process, the registry reports every run it opens and ends and every version it registers here; an
interrupt handler calls :func:`begin_shutdown`, after which no thread may open, end or register anything (they
wait until the process exits), so the handler's snapshot of open runs is final and it alone ends them ``KILLED``.

Pure standard library; the MLflow calls live in :mod:`tinymlops.registry`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

HOST_TAG = "tinymlops.host"
PID_TAG = "tinymlops.pid"
PID_START_TAG = "tinymlops.pid_start"
#: set on a version whose run did not finish: ``interrupted`` (SIGINT/SIGTERM) or ``crashed`` (found by doctor)
INCOMPLETE_TAG = "tinymlops.incomplete"
ENDED_BY_TAG = "tinymlops.ended_by"

_cond = threading.Condition()
_open_runs: dict[str, None] = {}  # insertion-ordered set of run ids this process opened and has not ended
_registered: list[tuple[str, str, str]] = []  # (model, version, run id) registered by this process
_inflight = 0
_shutting_down = False


def _proc_start(pid: int) -> str:
    """Return a process's start time in clock ticks since boot (Linux), or '' where /proc is not there."""
    try:
        stat = f"/proc/{pid}/stat"
        with open(stat, encoding="ascii") as f:  # noqa: PTH123 - tiny read, no Path object needed
            text = f.read()
    except OSError:
        return ""
    # the command name (field 2) may contain spaces and parentheses: split after its closing parenthesis
    return text.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Return the tags naming this process as the owner of a run."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _proc_start(pid)}


def owner_state(tags: dict[str, str]) -> str:
    """Classify a RUNNING run's owner: ``live``, ``dead`` (this host, process gone), ``other-host`` or ``unknown``."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG, "")
    if not host or not pid.isdigit():
        return "unknown"
    if host != socket.gethostname():
        return "other-host"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:  # alive, owned by another user
        pass
    started = tags.get(PID_START_TAG, "")
    if started and _proc_start(int(pid)) not in ("", started):
        return "dead"  # the pid was reused by a newer process
    return "live"


# ---------------------------------------------------------------------------------------------------------------
# what this process has open (the registry reports here)
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def state_change() -> Iterator[None]:
    """Let one run-state change (open, end, register) through, or wait forever if the process is shutting down."""
    global _inflight
    with _cond:
        blocked = _shutting_down
        if not blocked:
            _inflight += 1
    if blocked:
        threading.Event().wait()  # the interrupt handler ends this process; nothing may change the store now
    try:
        yield
    finally:
        with _cond:
            _inflight -= 1
            _cond.notify_all()


def opened(run_id: str) -> None:
    """Record a run this process opened."""
    with _cond:
        _open_runs[run_id] = None


def closed(run_id: str) -> None:
    """Record that a run is being ended by its owner (call inside :func:`state_change`)."""
    with _cond:
        _open_runs.pop(run_id, None)


def registered(model: str, version: str, run_id: str) -> None:
    """Record a version this process registered from a run."""
    with _cond:
        _registered.append((model, version, run_id))


def registered_from(run_id: str) -> list[tuple[str, str]]:
    """Return the (model, version) pairs this process registered from a run."""
    with _cond:
        return [(m, v) for m, v, r in _registered if r == run_id]


def open_runs() -> list[str]:
    """Return the ids of runs this process opened and has not ended, oldest first."""
    with _cond:
        return list(_open_runs)


@dataclass
class Snapshot:
    """What an interrupted process leaves behind: its open runs and the versions registered from them."""

    runs: list[str] = field(default_factory=list)
    versions: list[tuple[str, str]] = field(default_factory=list)  # (model, version)
    settled: bool = True  # False if a state change was still in flight when the wait timed out


def begin_shutdown(wait_s: float = 2.0) -> Snapshot:
    """Stop every other thread from changing run state, wait for changes in flight, return what is open."""
    global _shutting_down
    deadline = time.monotonic() + wait_s
    with _cond:
        _shutting_down = True
        while _inflight > 0 and time.monotonic() < deadline:
            _cond.wait(max(0.0, deadline - time.monotonic()))
        runs = list(_open_runs)
        open_set = set(runs)
        versions = [(m, v) for m, v, r in _registered if r in open_set]
        return Snapshot(runs, versions, _inflight == 0)


def shutting_down() -> bool:
    """Return True once :func:`begin_shutdown` was called."""
    return _shutting_down


# ---------------------------------------------------------------------------------------------------------------
# doctor: runs left RUNNING by a process that no longer exists
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One RUNNING run in the store, whose owner it has and what the doctor did about it."""

    run_id: str
    experiment_id: str
    name: str
    owner: str  # "host:pid" or "" when the run carries no owner tags
    state: str  # see owner_state
    action: str = "none"
    versions: list[str] = field(default_factory=list)  # "model/version" registered from the run

    @property
    def problem(self) -> bool:
        """Return True while the run is stale (its process is gone, or unknown) and still RUNNING."""
        return self.state in ("dead", "unknown") and not self.action.startswith("ended")


def diagnose(fix: bool = False, unowned: bool = False) -> list[Finding]:
    """Find RUNNING runs; with ``fix`` end those whose process is gone KILLED (``unowned``: runs without owner too).

    Runs of a live process on this host and runs owned by another host are never touched.
    """
    from tinymlops import registry

    findings = []
    for r in registry.running_runs():
        state = owner_state(r.tags)
        owner = f"{r.tags[HOST_TAG]}:{r.tags[PID_TAG]}" if state != "unknown" else ""
        f = Finding(r.run_id, r.experiment_id, r.name, owner, state)
        if state == "live":
            f.action = "skipped: its process is alive"
        elif state == "other-host":
            f.action = "skipped: owned by another host"
        elif fix and (state == "dead" or unowned):
            versions = registry.end_stale_run(r.run_id)
            f.versions = [f"{v.name}/{v.version}" for v in versions]
            f.action = "ended KILLED" + (f"; versions tagged {INCOMPLETE_TAG}=crashed" if versions else "")
        elif state == "unknown":
            f.action = "no owner tags: end with --fix --unowned if no process uses it"
        else:
            f.action = "process gone: end with --fix"
        findings.append(f)
    return findings
