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
    manifest = bundle.manifest
    with st.session() as s:
        if s.get(Package, bundle.id) is None:
            s.add(Package(id=bundle.id, model_name=model_name, model_version=str(version),
                          variant=str(manifest.get("variant", ""))[:64], format=manifest["format"], target=target,
                          sha256=manifest["sha256"], size_bytes=len(bundle.artifact),
                          manifest_json=bundle.manifest_bytes.decode("utf-8"),
                          signature_b64=bundle.upload_json()["signature_b64"], key_id=manifest["key_id"],
                          artifact=bundle.artifact, created_unix_s=time.time()))
    return bundle.id


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
