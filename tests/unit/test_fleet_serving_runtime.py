"""The fleet service tunes the interpreter only while it serves: the cyclic GC's thresholds (full collections
stopped the event loop for 85-260 ms every 1-2 s under 10,000 keep-alive devices) and the GIL switch interval (the
telemetry writer's wait behind the event loop); a process that embeds the service (one or several) gets its own
settings back when the last one stops."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from tinymlops.fleet import service, store
from tinymlops.fleet.service.app import GC_THRESHOLDS, GIL_SWITCH_S


def test_gc_and_gil_settings_apply_while_serving_and_are_restored(tmp_path: Path) -> None:
    st = store.open_store(f"sqlite:///{tmp_path / 'f.db'}")
    before = gc.get_threshold(), sys.getswitchinterval()
    assert before != (GC_THRESHOLDS, GIL_SWITCH_S)
    frozen = gc.get_freeze_count()
    first, second = TestClient(service.create_app(st=st)), TestClient(service.create_app(st=st))
    try:
        with first:
            assert first.get("/healthz").status_code == 200
            assert gc.get_threshold() == GC_THRESHOLDS
            assert sys.getswitchinterval() == GIL_SWITCH_S
            assert gc.get_freeze_count() > frozen  # start-up objects are kept out of the collector's scans
            second.__enter__()  # a second service of the same process, still serving after the first stops
        assert (gc.get_threshold(), sys.getswitchinterval()) == (GC_THRESHOLDS, GIL_SWITCH_S)
        assert second.get("/healthz").status_code == 200
        second.__exit__(None, None, None)
        assert (gc.get_threshold(), sys.getswitchinterval()) == before
    finally:
        gc.unfreeze()
        st.dispose()
