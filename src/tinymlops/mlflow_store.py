"""The MLflow store as files and URIs: refuse unusable ``sqlite:`` stores, explain store failures in a few words,
and move or repair the embedded store (``<home>/mlflow.db`` + ``<home>/mlartifacts/``).

MLflow records artifact locations as absolute URIs in its database (experiments, runs, model versions, logged
models), so a project home that was moved or copied still points at the old directory and its artifacts and
registered versions cannot be downloaded. :func:`move_store` moves the home and rewrites those locations;
:func:`relocate` repairs a home that was already moved by hand (it finds the old directory in the database).
The rewrite is one SQL transaction on the SQLite file: either every location moves or none does.

This module edits MLflow's schema (3.x: the columns in ``LOCATION_COLUMNS``) directly, through SQLAlchemy; it
never imports MLflow. Stop other tinymlops/MLflow processes using the store first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tinymlops import settings
from tinymlops.errors import ConfigError, RegistryError, UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: (table, column) holding an artifact location in MLflow 3's tracking/registry schema
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
                    ("model_versions", "storage_location"), ("logged_models", "artifact_location"))
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


#: first bytes of every SQLite 3 database file
_SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_uri(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:`` URI (None for other stores), refusing unusable ones up front.

    MLflow would create a missing directory and an empty store there, so a typo in the URI silently starts a new,
    empty registry: a directory that does not exist is refused instead (ConfigError, exit 2). A file that is not
    an SQLite database is refused before MLflow touches it (RegistryError naming the file).
    """
    if not uri.startswith("sqlite:"):
        return None
    database = uri.removeprefix("sqlite:").removeprefix("//").split("?", 1)[0]
    database = database[1:] if database.startswith("/") else database  # sqlite:///rel, sqlite:////abs
    if database in ("", ":memory:"):
        return None
    path = Path(database).absolute()
    if not path.parent.is_dir():
        raise ConfigError(f"MLflow tracking URI {uri}: directory {path.parent} does not exist (create it, or fix "
                          "MLFLOW_TRACKING_URI / mlflow.tracking_uri; nothing was created)")
    if path.is_dir():
        raise ConfigError(f"MLflow tracking URI {uri}: {path} is a directory, not a database file")
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                raise RegistryError(f"MLflow store {path} is not an SQLite database (corrupt, or another kind of "
                                    "file): restore it from a backup or move it away to start a new store")
    return path


def store_error_cause(exc: BaseException) -> str:
    """Return the cause of an MLflow transport/store failure in a few words (no urllib3 retry text)."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(seen):  # the innermost socket error says it best
        if isinstance(err, TimeoutError) or type(err).__name__ in ("ReadTimeout", "ConnectTimeout", "timeout"):
            return "timed out"
        if isinstance(err, OSError) and err.strerror:
            return str(err.strerror)
    text = str(exc)
    for pattern, fmt in ((r"\[Errno -?\d+\] ([^'\")]+)", "{0}"), (r"error code (\d+) != 200", "HTTP {0} (not an MLflow "
                                                                                       "server, or access refused)")):
        m = re.search(pattern, text)
        if m:
            return fmt.format(m.group(1).strip())
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


@contextlib.contextmanager
def env_override(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block, restoring them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Relocation:
    """What a move/relocate did: old and new home, and how many locations each column had rewritten."""

    old_home: str
    new_home: str
    db: str
    updated: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.updated.values())


def _engine(db: Path) -> Engine:
    from sqlalchemy import create_engine

    return create_engine(f"sqlite:///{db}")


def _embedded_db(home: Path) -> Path:
    db = home / STORE_FILE
    if not db.is_file():
        raise UsageError(f"{db}: no embedded MLflow store here (set TINYMLOPS_HOME to the store's directory)")
    return db


def _check_embedded(home: Path) -> None:
    """Refuse when the configured tracking URI is not the embedded store of ``home`` (a server or other file)."""
    uri = settings.tracking_uri()
    if uri != f"sqlite:///{home / STORE_FILE}":
        raise UsageError(f"the MLflow store in use is {uri}, not the embedded store {home / STORE_FILE}: "
                         "unset MLFLOW_TRACKING_URI (a server's locations are the server's business)")


def find_old_home(db: Path) -> Path | None:
    """Return the home directory the store's locations point at (the most common ``<dir>/mlartifacts/...``)."""
    from sqlalchemy import text

    homes: Counter[str] = Counter()
    with _engine(db).connect() as conn:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            for (value,) in conn.execute(text(f"SELECT {column} FROM {table}")):  # noqa: S608 - fixed names
                marker = f"/{ARTIFACTS_DIR}/"
                if isinstance(value, str) and value.startswith("file://") and marker in value:
                    homes[value.removeprefix("file://").split(marker, 1)[0]] += 1
    if not homes:
        return None
    from urllib.parse import unquote

    return Path(unquote(homes.most_common(1)[0][0]))


def rewrite_locations(db: Path, old_home: Path, new_home: Path) -> dict[str, int]:
    """Rewrite every location under ``old_home`` (as ``file://`` URI or plain path) to ``new_home``; one transaction.

    Returns:
        ``{"table.column": rows changed}`` for the columns that exist in this schema.
    """
    from sqlalchemy import inspect, text

    engine = _engine(db)
    pairs = [(old_home.as_uri(), new_home.as_uri()), (str(old_home), str(new_home))]
    counts: dict[str, int] = {}
    tables = set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            n = 0
            for old, new in pairs:
                sql = text(f"UPDATE {table} SET {column} = :new || substr({column}, :cut) "  # noqa: S608
                           f"WHERE {column} = :old OR substr({column}, 1, :plen) = :prefix")
                n += conn.execute(sql, {"new": new, "cut": len(old) + 1, "old": old, "plen": len(old) + 1,
                                        "prefix": old + "/"}).rowcount
            counts[f"{table}.{column}"] = n
    engine.dispose()
    return counts


def relocate(home: Path | None = None, old_home: Path | None = None) -> Relocation:
    """Point an already-moved store's locations at its current directory (``old_home`` found if not given)."""
    home = (home or settings.home()).absolute()
    db = _embedded_db(home)
    old = old_home or find_old_home(db)
    if old is None or old == home:
        return Relocation(str(old or home), str(home), str(db), {})
    updated = rewrite_locations(db, old, home)
    updated[settings.FLEET_POINTER] = int(_rewrite_fleet_pointer(home, old, home))
    return Relocation(str(old), str(home), str(db), updated)


def _rewrite_fleet_pointer(home: Path, old_home: Path, new_home: Path) -> bool:
    """Point ``<home>/fleet.json`` (the recorded fleet DB) at the moved home if it pointed into the old one."""
    import json

    pointer = home / settings.FLEET_POINTER
    try:
        rec = json.loads(pointer.read_text())
        url = str(rec["db"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    old = f"sqlite:///{old_home}/"
    if not url.startswith(old):
        return False
    rec["db"] = f"sqlite:///{new_home}/{url.removeprefix(old)}"
    tmp = pointer.with_name(f".{pointer.name}.tmp")
    tmp.write_text(json.dumps(rec) + "\n")
    tmp.replace(pointer)
    return True


def move_store(new_home: Path, home: Path | None = None) -> Relocation:
    """Move the whole project home (store, artifacts, fleet DB, keys) to ``new_home`` and rewrite the locations.

    Raises:
        UsageError: no embedded store; another store is configured; ``new_home`` exists (and is not empty) or is
            inside the home.
    """
    home = (home or settings.home()).absolute()
    _check_embedded(home)
    db = _embedded_db(home)
    new_home = new_home.absolute()
    if new_home == home or home in new_home.parents:
        raise UsageError(f"{new_home}: must be outside the current home {home}")
    if new_home.exists() and (not new_home.is_dir() or any(new_home.iterdir())):
        raise UsageError(f"{new_home}: already exists; choose a new (or empty) directory")
    if not new_home.parent.is_dir():
        raise UsageError(f"{new_home.parent}: directory does not exist")
    if new_home.is_dir():
        new_home.rmdir()
    shutil.move(str(home), str(new_home))
    try:
        updated = rewrite_locations(new_home / db.name, home, new_home)
        updated[settings.FLEET_POINTER] = int(_rewrite_fleet_pointer(new_home, home, new_home))
    except BaseException:
        shutil.move(str(new_home), str(home))  # the rewrite is all-or-nothing; so is the move
        raise
    return Relocation(str(home), str(new_home), str(new_home / db.name), updated)
