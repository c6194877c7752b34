"""Reading the fleet server's answers on the device as untrusted input: capped, bounded, shape-checked."""

from __future__ import annotations

from typing import Any

from tinymlops.fleet.packages import MAX_MANIFEST_BYTES, PackageRejected
from tinymlops.fleet.safejson import UnsafeJSON, loads_bounded

MAX_ANSWER_BYTES = 2 * MAX_MANIFEST_BYTES + 65536  # a signed manifest's JSON envelope (the manifest is escaped in it)


class AgentStopped(RuntimeError):
    """The agent cannot continue (credential refused, enrolment impossible)."""


class BadAnswer(ValueError):
    """The server's answer is not what the protocol allows (too large, not JSON, wrong shape)."""


async def read_capped(response: Any, max_bytes: int) -> tuple[bytes, int]:
    """Read a streamed response body up to ``max_bytes`` + one chunk; return (bytes kept, bytes seen)."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            break
        chunks.append(chunk)
    return b"".join(chunks), size


async def read_json(response: Any, max_bytes: int, what: str) -> Any:
    """Read and parse a streamed JSON answer of at most ``max_bytes`` (BadAnswer otherwise)."""
    body, size = await read_capped(response, max_bytes)
    if size > max_bytes:
        raise BadAnswer(f"answer to {what} is larger than {max_bytes} bytes")
    try:
        return loads_bounded(body, max_bytes)
    except UnsafeJSON as exc:
        raise BadAnswer(f"answer to {what}: {exc}") from None


async def get_json(client: Any, url: str, headers: dict[str, str], max_bytes: int, device_id: str) -> Any:
    """GET a JSON answer of at most ``max_bytes`` (BadAnswer if larger, not JSON or too deep; AgentStopped on
    401/403)."""
    async with client.stream("GET", url, headers=headers) as r:
        if r.status_code in (401, 403):
            raise AgentStopped(f"{device_id}: credential refused ({r.status_code})")
        r.raise_for_status()
        return await read_json(r, max_bytes, url)


def brief(exc: BaseException) -> str:
    """One line naming an error (the type, and the message cut short)."""
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def checked_specs(manifest: dict[str, Any]) -> tuple[Any, Any]:
    """Return a manifest's pre-processing spec and reference profile (PackageRejected if either is malformed)."""
    from pydantic import ValidationError

    from tinymlops.monitor.reference import ReferenceProfile
    from tinymlops.preprocessing import FittedPreprocessing

    try:
        spec = FittedPreprocessing(**manifest["preprocessing"])
        spec.load_code()  # a custom block whose code cannot load here is refused before install, not while serving
        return spec, ReferenceProfile.model_validate(manifest["reference"])
    except (TypeError, ValueError, KeyError, ValidationError) as exc:
        raise PackageRejected(f"manifest pre-processing or reference is malformed: {brief(exc)}") from None
