"""What a device keeps about its identity and trust: its credential file and its key set (both in its state dir).

* ``credential.json`` (0600): the enrolment answer plus ``issued_unix_s``; :func:`rotate_credential` swaps in a new
  credential from the service (the old one stops working at the new one's first use, see
  :mod:`tinymlops.fleet.credentials`).
* ``keyset.json``: the latest key set this device accepted (:mod:`tinymlops.fleet.keyset`); without it, the keys it
  was provisioned with (version 0). :func:`follow_keys` fetches newer signed updates and applies each verified link.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tinymlops.fleet import keyset
from tinymlops.fleet.answers import BadAnswer

log = logging.getLogger("tinymlops.agent")
CREDENTIAL_FILE = "credential.json"
KEYSET_FILE = "keyset.json"


def save_credential(state_dir: Path, credential: dict[str, Any]) -> dict[str, Any]:
    """Write the credential file atomically with owner-only permissions; return what was written."""
    data = {**credential, "issued_unix_s": credential.get("issued_unix_s") or time.time()}
    path = state_dir / CREDENTIAL_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return data


def rotation_due(credential: dict[str, Any] | None, max_age_s: float | None) -> bool:
    """Return whether a credential is older than ``max_age_s`` (never without a maximum age)."""
    if credential is None or max_age_s is None:
        return False
    issued = credential.get("issued_unix_s")
    return not isinstance(issued, (int, float)) or time.time() - issued >= max_age_s


async def rotate_credential(client: Any, url: str, headers: dict[str, str], state_dir: Path,
                            credential: dict[str, Any]) -> dict[str, Any]:
    """Ask the service for a new credential and store it; return the new credential record.

    Stored before first use, so a crash in between leaves a credential that still works (the old one keeps working
    until the new one is used; a lost answer just means the next rotation issues another).
    """
    r = await client.post(url, headers=headers)
    r.raise_for_status()
    answer = r.json()
    new = answer.get("credential") if isinstance(answer, dict) else None
    if not isinstance(new, str) or not new.startswith("tmo_dev_") or len(new) > 256:
        raise BadAnswer("credential rotation answer carries no credential")
    return save_credential(state_dir, {**credential, "credential": new, "issued_unix_s": time.time()})


def load_keyset(state_dir: Path, provisioned: list[Any]) -> keyset.KeySet:
    """Return the key set this device accepted last, or version 0 (the provisioned keys)."""
    path = state_dir / KEYSET_FILE
    if path.is_file():
        try:
            return keyset.KeySet.from_payload(json.loads(path.read_text()))
        except (OSError, ValueError, keyset.KeyUpdateRejected) as exc:
            log.warning("%s unreadable (%s): trusting the provisioned keys", path, exc)
    return keyset.KeySet.initial(provisioned)


async def follow_keys(get_json: Callable[..., Awaitable[Any]], device_path: str, state_dir: Path,
                      current: keyset.KeySet) -> keyset.KeySet:
    """Fetch signed key-set updates newer than ``current``, apply every link that verifies, persist the result.

    A link that does not verify (forged, replayed, out of order) stops the walk: the device keeps the last good
    key set and tries again at a later poll.
    """
    from tinymlops.fleet.install import atomic_write

    updates = await get_json(f"{device_path}/key-updates?since={current.version}", 1 << 20)
    if not isinstance(updates, list):
        raise BadAnswer("key updates answer is not a list")
    start = current
    for u in updates[:100]:
        try:
            current = keyset.apply_update(current, u)
        except keyset.KeyUpdateRejected as exc:
            log.warning("key update refused: %s", exc)
            break
    if current.version != start.version:
        atomic_write(state_dir / KEYSET_FILE, json.dumps(current.payload()).encode())
        log.info("key set now at version %d (signing keys %s)", current.version, sorted(current.signing))
    return current
