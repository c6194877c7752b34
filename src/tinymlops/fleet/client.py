"""Operator client of the fleet service (sync, httpx): what the CLI, the simulator and rollout call.

Every method maps one operator endpoint; HTTP errors become :class:`FleetError` with the server's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tinymlops.errors import TinyMLOpsError


class FleetError(TinyMLOpsError):
    """The fleet service refused a request or could not be reached."""


class OperatorClient:
    """Talk to the fleet service with an operator token."""

    def __init__(self, server: str, token: str, timeout_s: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {token}"},
                                  timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FleetError(f"fleet service {self.server} unreachable: {exc}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise FleetError(f"{method} {path} -> {r.status_code}: {detail}")
        return r.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def enrolment_tokens(self, cohort: str = "default", count: int = 1, samples_opt_in: bool = False,
                         feedback_opt_in: bool = False, ttl_s: float = 86400.0,
                         labels: dict[str, str] | None = None) -> list[str]:
        """Create one-time enrolment tokens for a cohort."""
        return self._call("POST", "/v1/enrolment-tokens", json={
            "cohort": cohort, "count": count, "samples_opt_in": samples_opt_in, "feedback_opt_in": feedback_opt_in,
            "ttl_s": ttl_s, "labels": labels or {}})["tokens"]

    def upload(self, bundle: Any, key_dir: Path | None = None) -> dict[str, Any]:
        """Upload a signed package bundle; return its stored metadata (id, target, version...).

        An encrypted bundle's content key is kept on this host (``<home>/keys/content``), never uploaded.
        """
        info = self._call("POST", "/v1/packages", json=bundle.upload_json())
        if getattr(bundle, "content_key", None):
            from tinymlops.fleet import crypto

            crypto.save_content_key(info["id"], bundle.content_key, key_dir)
        return info

    def grant(self, package_id: str, device_ids: list[str], key_dir: Path | None = None) -> int:
        """Wrap an encrypted package's content key (kept on this host) for devices; return how many got it."""
        from tinymlops.fleet import crypto, grants

        cek = crypto.load_content_key(package_id, key_dir)
        if cek is None or not device_ids:
            return 0
        wraps: dict[str, str] = {}
        for i in range(0, len(device_ids), 1000):
            keys = self._call("GET", "/v1/device-keys", params={"device_id": device_ids[i:i + 1000]})["keys"]
            wraps.update(grants.make_wraps(package_id, keys, cek))
        if wraps:
            self._call("PUT", f"/v1/packages/{package_id}/keys", json={"wraps": wraps})
        return len(wraps)

    def packages(self, model_name: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/packages", params={"model_name": model_name} if model_name else None)

    def set_desired(self, package_id: str, device_ids: list[str] | None = None, cohort: str | None = None,
                    reason: str = "") -> list[str]:
        """Point devices and/or a cohort at a package; return the device ids updated."""
        body: dict[str, Any] = {"package_id": package_id, "reason": reason}
        if device_ids:
            body["device_ids"] = device_ids
        if cohort:
            body["cohort"] = cohort
        updated: list[str] = self._call("PUT", "/v1/desired-state", json=body)["updated"]
        self.grant(package_id, updated)  # an encrypted package: only the assigned devices can decrypt it
        return updated

    def set_personalise(self, cohort: str, enabled: bool, reason: str = "") -> dict[str, Any]:
        """Switch a cohort's on-device personalisation (deploy token); return the setting."""
        return self._call("PUT", f"/v1/cohorts/{cohort}/personalise", json={"enabled": enabled, "reason": reason})

    def personalise_settings(self) -> list[dict[str, Any]]:
        """Return the cohorts' personalisation switches (cohorts not listed are off)."""
        return self._call("GET", "/v1/cohorts/personalise")

    def devices(self, cohort: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"cohort": cohort, "target": target}.items() if v}
        return self._call("GET", "/v1/devices", params=params)

    def events(self, since: float | None = None, device_id: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"since": since, "device_id": device_id}.items() if v is not None}
        return self._call("GET", "/v1/events", params=params)

    def telemetry(self, model_name: str, **filters: Any) -> list[dict[str, Any]]:
        params = {"model_name": model_name, **{k: v for k, v in filters.items() if v is not None}}
        return self._call("GET", "/v1/telemetry", params=params)

    def merged(self, model_name: str, **filters: Any) -> dict[str, Any]:
        params = {"model_name": model_name, **{k: v for k, v in filters.items() if v is not None}}
        return self._call("GET", "/v1/telemetry/merged", params=params)

    def key_updates(self, since: int = 0) -> list[dict[str, Any]]:
        """Return the signed key-set updates the service relays, after version ``since``."""
        return self._call("GET", "/v1/key-updates", params={"since": since})

    def publish_key_update(self, update: dict[str, Any]) -> int:
        """Store the next signed key-set update on the service (admin token); return its version."""
        return int(self._call("POST", "/v1/key-updates", json=update)["version"])
