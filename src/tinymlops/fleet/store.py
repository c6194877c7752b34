"""Fleet store: SQLAlchemy models, schema migrations (alembic) and the queries other areas build on.

One declarative :class:`Base` holds every fleet table; other modules add tables to ``Base.metadata`` with an alembic
migration in ``migrations/versions/`` (``down_revision`` = the current head). ``open_store(url)`` upgrades the
database to head before use (never ad-hoc DDL). Times are unix seconds (float) in ``*_unix_s`` columns.

Interfaces for other areas (stable):

* ``open_store(url=None) -> Store`` (default ``settings.fleet_db_url()``); ``store.session()`` commits on success.
* ``telemetry_window(store, model_name, version, target=None, cohort=None, since=None, until=None,
  device_id=None) -> list[TelemetryRecord]``: telemetry reports whose window ends in ``[since, until)``, with
  the :class:`~tinymlops.monitor.sketches.Sketch` parsed, plus device id, target, cohort, and the opt-in
  ``samples`` (raw feature vectors) and ``feedback`` (delayed labels) when the device sent them.
* ``set_desired(store, package_id, device_ids=None, cohort=None, reason="")`` -> device ids updated; ``get_device``
  / ``list_devices`` (versions, last_seen); ``deployment_events(store, since=None, device_id=None, package_id=None)``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tinymlops import settings
from tinymlops.monitor.sketches import Sketch

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    """Declarative base of every table in the fleet database (rollout adds its tables here too)."""


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    cohort: Mapped[str] = mapped_column(String(64), index=True, default="default")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    current_package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    current_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    previous_package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    samples_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    enrolled_unix_s: Mapped[float] = mapped_column(Float)
    last_seen_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class EnrolmentToken(Base):
    __tablename__ = "enrolment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(64), default="default")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    samples_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    created_unix_s: Mapped[float] = mapped_column(Float)
    expires_unix_s: Mapped[float] = mapped_column(Float)
    used_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class OperatorToken(Base):
    __tablename__ = "operator_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    created_unix_s: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    role: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")  # read|deploy|admin
    expires_unix_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class Package(Base):
    __tablename__ = "packages"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(32))
    variant: Mapped[str] = mapped_column(String(64), default="")
    format: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    manifest_json: Mapped[str] = mapped_column(Text)  # the exact signed bytes (utf-8)
    signature_b64: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(32))
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    created_unix_s: Mapped[float] = mapped_column(Float)


class DesiredState(Base):
    __tablename__ = "desired_state"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    package_id: Mapped[str] = mapped_column(ForeignKey("packages.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    set_unix_s: Mapped[float] = mapped_column(Float)
    # signed rollback authorisation (packages.authorise_rollback) relayed to the device with this desired state
    authorisation_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class CohortDesiredState(Base):
    """Desired package of a cohort: applied to its current devices and to devices enrolling later."""

    __tablename__ = "cohort_desired_state"

    cohort: Mapped[str] = mapped_column(String(64), primary_key=True)
    package_id: Mapped[str] = mapped_column(ForeignKey("packages.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    set_unix_s: Mapped[float] = mapped_column(Float)


class Telemetry(Base):
    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),
        Index("ix_telemetry_model_window", "model_name", "model_version", "window_end_unix_s"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)  # agents number reports by millisecond clock: past int32
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    target: Mapped[str] = mapped_column(String(64))
    cohort: Mapped[str] = mapped_column(String(64))
    window_start_unix_s: Mapped[float] = mapped_column(Float)
    window_end_unix_s: Mapped[float] = mapped_column(Float)
    received_unix_s: Mapped[float] = mapped_column(Float)
    n_inferences: Mapped[int] = mapped_column(Integer)
    sketch_json: Mapped[str] = mapped_column(Text)
    samples_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class DeploymentEvent(Base):
    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # installed | rejected | rolled_back | load_failed
    package_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    at_unix_s: Mapped[float] = mapped_column(Float, index=True)


# --------------------------------------------------------------------------------------------------------------
# engine, migrations, sessions
# --------------------------------------------------------------------------------------------------------------


def default_url() -> str:
    """Return the default database URL: ``TINYMLOPS_FLEET_DB``, the recorded demo fleet, else ``<home>/fleet.db``."""
    return settings.fleet_db_url()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run during the group-commit writer; NORMAL sync in WAL survives process crashes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def alembic_config(url: str) -> Any:
    """Return an alembic Config pointing at the packaged migrations and the given database."""
    from alembic.config import Config

    cfg = Config(str(Path(__file__).with_name("alembic.ini")))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind an engine to a revision (head by default)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def schema_revision(engine: Engine) -> str | None:
    """Return the alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Store:
    """A migrated fleet database: an engine plus a session factory."""

    def __init__(self, url: str | None = None, migrate_schema: bool = True) -> None:
        self.url = url or default_url()
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if migrate_schema:
            migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = threading.Lock()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session that commits on success and rolls back on error."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def open_store(url: str | None = None) -> Store:
    """Open (and migrate to head) the fleet database at ``url`` (default: :func:`settings.fleet_db_url`)."""
    return Store(url)


# --------------------------------------------------------------------------------------------------------------
# queries for other areas
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TelemetryRecord:
    """One telemetry report as stored: who sent it, for which model, and its parsed sketch."""

    id: int
    device_id: str
    target: str
    cohort: str
    model_name: str
    model_version: str
    package_id: str | None
    seq: int
    window_start_unix_s: float
    window_end_unix_s: float
    received_unix_s: float
    sketch: Sketch
    samples: list[list[float]] | None = None
    feedback: list[dict[str, Any]] | None = None

    @classmethod
    def from_row(cls, row: Telemetry) -> TelemetryRecord:
        return cls(
            id=row.id, device_id=row.device_id, target=row.target, cohort=row.cohort,
            model_name=row.model_name, model_version=row.model_version, package_id=row.package_id,
            seq=row.seq, window_start_unix_s=row.window_start_unix_s, window_end_unix_s=row.window_end_unix_s,
            received_unix_s=row.received_unix_s, sketch=Sketch.model_validate_json(row.sketch_json),
            samples=json.loads(row.samples_json) if row.samples_json else None,
            feedback=json.loads(row.feedback_json) if row.feedback_json else None,
        )


def telemetry_window(store: Store, model_name: str, version: str | int | None = None, target: str | None = None,
                     cohort: str | None = None, since: float | None = None, until: float | None = None,
                     device_id: str | None = None) -> list[TelemetryRecord]:
    """Return telemetry of a model (optionally one version) whose window ends in ``[since, until)``, oldest first."""
    q = select(Telemetry).where(Telemetry.model_name == model_name)
    if version is not None:
        q = q.where(Telemetry.model_version == str(version))
    if target is not None:
        q = q.where(Telemetry.target == target)
    if cohort is not None:
        q = q.where(Telemetry.cohort == cohort)
    if device_id is not None:
        q = q.where(Telemetry.device_id == device_id)
    if since is not None:
        q = q.where(Telemetry.window_end_unix_s >= since)
    if until is not None:
        q = q.where(Telemetry.window_end_unix_s < until)
    q = q.order_by(Telemetry.window_end_unix_s, Telemetry.id)
    with store.session() as s:
        return [TelemetryRecord.from_row(r) for r in s.scalars(q)]


@dataclass
class DeviceInfo:
    """A device as operators and the rollout controller see it (no secrets)."""

    id: str
    target: str
    cohort: str
    labels: dict[str, Any]
    current_package_id: str | None
    current_version: str | None
    previous_package_id: str | None
    previous_version: str | None
    desired_package_id: str | None
    last_seen_unix_s: float | None
    enrolled_unix_s: float
    samples_opt_in: bool
    feedback_opt_in: bool
    revoked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"}


def _device_info(d: Device, desired: str | None) -> DeviceInfo:
    return DeviceInfo(id=d.id, target=d.target, cohort=d.cohort, labels=dict(d.labels or {}),
                      current_package_id=d.current_package_id, current_version=d.current_version,
                      previous_package_id=d.previous_package_id, previous_version=d.previous_version,
                      desired_package_id=desired, last_seen_unix_s=d.last_seen_unix_s,
                      enrolled_unix_s=d.enrolled_unix_s, samples_opt_in=d.samples_opt_in,
                      feedback_opt_in=d.feedback_opt_in, revoked=d.revoked)


def list_devices(store: Store, cohort: str | None = None, target: str | None = None) -> list[DeviceInfo]:
    """Return devices (optionally of one cohort/target) with versions, desired package and last_seen."""
    q = select(Device, DesiredState.package_id).outerjoin(DesiredState, DesiredState.device_id == Device.id)
    if cohort is not None:
        q = q.where(Device.cohort == cohort)
    if target is not None:
        q = q.where(Device.target == target)
    with store.session() as s:
        return [_device_info(d, p) for d, p in s.execute(q.order_by(Device.id)).all()]


def get_device(store: Store, device_id: str) -> DeviceInfo | None:
    """Return one device, or None."""
    with store.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            return None
        ds = s.get(DesiredState, device_id)
        return _device_info(d, ds.package_id if ds else None)


def set_desired(store: Store, package_id: str, device_ids: list[str] | None = None, cohort: str | None = None,
                reason: str = "", authorisation: str | None = None) -> list[str]:
    """Set the desired package of devices (by id) and/or a whole cohort; return the device ids updated.

    ``authorisation`` (JSON of a signed rollback authorisation) is relayed to the devices with the desired state.

    Raises:
        LookupError: the package or a device does not exist, or a device's target differs from the package's.
    """
    now = time.time()
    updated: list[str] = []
    with store.session() as s:
        pkg = s.get(Package, package_id)
        if pkg is None:
            raise LookupError(f"package {package_id!r} does not exist")
        devices: list[Device] = []
        if cohort is not None:
            s.merge(CohortDesiredState(cohort=cohort, package_id=package_id, reason=reason, set_unix_s=now))
            devices += list(s.scalars(select(Device).where(Device.cohort == cohort, Device.target == pkg.target)))
        for did in device_ids or []:
            d = s.get(Device, did)
            if d is None:
                raise LookupError(f"device {did!r} does not exist")
            if d.target != pkg.target:
                raise LookupError(f"device {did!r} is a {d.target}; package {package_id!r} is for {pkg.target}")
            devices.append(d)
        for d in devices:
            s.merge(DesiredState(device_id=d.id, package_id=package_id, reason=reason, set_unix_s=now,
                                 authorisation_json=authorisation))
            updated.append(d.id)
    return sorted(set(updated))


def deployment_events(store: Store, since: float | None = None, device_id: str | None = None,
                      package_id: str | None = None) -> list[dict[str, Any]]:
    """Return deployment events (installed, rejected, rolled_back, load_failed), oldest first."""
    q = select(DeploymentEvent, Device.cohort, Device.target).join(Device, Device.id == DeploymentEvent.device_id)
    if since is not None:
        q = q.where(DeploymentEvent.at_unix_s >= since)
    if device_id is not None:
        q = q.where(DeploymentEvent.device_id == device_id)
    if package_id is not None:
        q = q.where(DeploymentEvent.package_id == package_id)
    with store.session() as s:
        return [{"id": e.id, "device_id": e.device_id, "cohort": cohort, "target": target, "kind": e.kind,
                 "package_id": e.package_id, "model_version": e.model_version, "reason": e.reason,
                 "at_unix_s": e.at_unix_s}
                for e, cohort, target in s.execute(q.order_by(DeploymentEvent.at_unix_s, DeploymentEvent.id))]


def get_package_row(store: Store, package_id: str) -> dict[str, Any] | None:
    """Return a package's metadata (no artifact bytes), or None."""
    with store.session() as s:
        p = s.get(Package, package_id)
        if p is None:
            return None
        return {"id": p.id, "model_name": p.model_name, "model_version": p.model_version, "variant": p.variant,
                "format": p.format, "target": p.target, "sha256": p.sha256, "size_bytes": p.size_bytes,
                "key_id": p.key_id, "created_unix_s": p.created_unix_s}


def list_package_rows(store: Store, model_name: str | None = None) -> list[dict[str, Any]]:
    """Return the metadata of every stored package (oldest first), optionally of one model."""
    q = select(Package.id)
    if model_name is not None:
        q = q.where(Package.model_name == model_name)
    with store.session() as s:
        ids = list(s.scalars(q.order_by(Package.created_unix_s)))
    return [row for i in ids if (row := get_package_row(store, i)) is not None]
