"""Retrain trigger: the pure cooldown decision and the persisted, lock-protected state."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from tinymlops.monitor import retrain


def test_only_retrain_verdicts_outside_the_cooldown_start():
    assert retrain.decide_retrain("retrain", 1000.0, None, 3600).start
    assert not retrain.decide_retrain("warn", 1000.0, None, 3600).start
    assert not retrain.decide_retrain("retrain", 1000.0, None, 3600, enabled=False).start
    d = retrain.decide_retrain("retrain", 2000.0, 1000.0, 3600)
    assert not d.start and "cooldown" in d.reason and d.next_allowed_unix_s == 4600.0
    assert retrain.decide_retrain("retrain", 4600.0, 1000.0, 3600).start


def test_claim_persists_the_trigger_and_counts_suppressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    assert retrain.claim("m", "retrain", 60, now_unix_s=100).start
    assert not retrain.claim("m", "retrain", 60, now_unix_s=120).start
    assert not retrain.claim("m", "warn", 60, now_unix_s=130).start
    state = retrain.read_state("m")
    assert state["last_trigger_unix_s"] == 100 and state["suppressed_since_trigger"] == 1
    assert retrain.claim("m", "retrain", 60, now_unix_s=161).start
    assert retrain.read_state("m")["triggers"] == 2
    assert retrain.claim("other/model", "retrain", 60, now_unix_s=120).start  # cooldowns are per model


def test_corrupt_state_file_does_not_block_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TINYMLOPS_HOME", str(tmp_path))
    retrain.state_path("m").write_text("{not json")
    assert retrain.claim("m", "retrain", 60, now_unix_s=100).start


def _claim(home: str, q) -> None:
    import os

    os.environ["TINYMLOPS_HOME"] = home
    q.put(retrain.claim("storm", "retrain", 3600).start)


def test_a_storm_of_verdicts_in_parallel_processes_starts_one_retrain(tmp_path: Path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), q)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    starts = [q.get(timeout=5) for _ in procs]
    assert starts.count(True) == 1
    assert starts.count(False) == 7
