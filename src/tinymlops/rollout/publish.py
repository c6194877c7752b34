"""What a rollout takes from outside the fleet: a signed package per target, and the figures its gates expect.

``publish_package`` builds and signs a version's package for a target and stores it (through the service or
straight into the fleet DB); ``expected_latency_ms`` and ``target_slo_ms`` are the profiled latency and the
target's SLO the latency gate compares the canary with.
"""

from __future__ import annotations

import time
from typing import Any

from tinymlops import registry
from tinymlops.fleet.store import Package, Store
from tinymlops.metrics import target_figures


def publish_package(st: Store, model_name: str, version: str, target: str, client: Any = None,
                    targets_dir: Any = None) -> str:
    """Build and sign a package of a version for a target and store it in the fleet; return its id.

    With an operator client the package is uploaded through the service (which validates it); without one it is
    written to the fleet DB directly (same row the service would write).
    """
    from tinymlops.fleet import packages

    bundle = packages.build_package(model_name, version, target, targets=targets_dir)
    if client is not None:
        return str(client.upload(bundle)["id"])
    store_bundles(st, [bundle], model_name, version, target)
    return bundle.id


def store_bundles(st: Store, bundles: list[Any], model_name: str, version: str, target: str) -> None:
    """Write signed bundles to the fleet DB as package rows (the row the service's upload writes; idempotent)."""
    now = time.time()
    with st.session() as s:
        for b in bundles:
            if s.get(Package, b.id) is not None:
                continue
            m = b.manifest
            s.add(Package(id=b.id, model_name=model_name, model_version=str(version),
                          variant=str(m.get("variant", ""))[:64], format=m["format"], target=target,
                          sha256=m["sha256"], size_bytes=len(b.artifact),
                          manifest_json=b.manifest_bytes.decode("utf-8"),
                          signature_b64=b.upload_json()["signature_b64"], key_id=m["key_id"],
                          artifact=b.artifact, created_unix_s=now))


def expected_latency_ms(model_name: str, version: str, target: str) -> float | None:
    """Return the profiled latency of a version on a target (metric ``<target>.latency_ms`` of its run), if any."""
    mv = registry.get_version(model_name, version)
    try:
        figures = target_figures(registry.get_run(mv.run_id).metrics, target, ("latency_ms",))
    except Exception:  # a version without a readable run simply has no expectation
        return None
    return figures.get("latency_ms")


def target_slo_ms(target: str, targets_dir: Any = None) -> float | None:
    """Return a catalogue target's latency SLO (ms), if it declares one."""
    from tinymlops.profile.targets import get_target

    return get_target(target, targets_dir).latency_slo_ms
