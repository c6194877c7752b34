"""Wire models of the fleet service (pydantic, light): what operators and devices send and receive."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tinymlops.monitor.sketches import Sketch

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
PackageId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Reason = Annotated[str, Field(max_length=2000)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_SAMPLES_PER_REPORT = 64
MAX_SAMPLE_VALUES = 4096
MAX_FEEDBACK_PER_REPORT = 1024


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolmentTokenRequest(Wire):
    cohort: Name = "default"
    labels: dict[Name, Annotated[str, Field(max_length=128)]] = Field(default_factory=dict, max_length=32)
    samples_opt_in: bool = Field(False, description="devices may send a bounded reservoir sample of inputs")
    feedback_opt_in: bool = Field(False, description="devices may send labelled feedback (delayed ground truth)")
    ttl_s: float = Field(86400.0, gt=0, le=365 * 86400)
    count: int = Field(1, ge=1, le=10000)


class EnrolmentTokens(Wire):
    tokens: list[str]
    cohort: str
    expires_unix_s: float


PublicKeyB64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$", description="raw X25519 key, base64")]
WrappedKey = Annotated[str, Field(min_length=1, max_length=256)]


class EnrolRequest(Wire):
    enrolment_token: Annotated[str, Field(min_length=1, max_length=256)]
    device_id: Name
    target: Name
    encryption_public_key: PublicKeyB64 | None = Field(
        None, description="the device's X25519 public key: encrypted packages are wrapped for it")


class DeviceKeys(Wire):
    keys: dict[str, str]


class PackageKeys(Wire):
    wraps: dict[Name, WrappedKey] = Field(max_length=100000, description="device id -> content key wrapped for it")


class EnrolResponse(Wire):
    device_id: str
    credential: str
    target: str
    cohort: str
    samples_opt_in: bool
    feedback_opt_in: bool


class PackageUpload(Wire):
    manifest_json: Annotated[str, Field(min_length=2, max_length=2_000_000, description="exact signed bytes")]
    signature_b64: Annotated[str, Field(min_length=1, max_length=128)]
    artifact_b64: Annotated[str, Field(min_length=1, max_length=200_000_000)]


class PackageInfo(Wire):
    id: str
    model_name: str
    model_version: str
    variant: str
    format: str
    target: str
    sha256: str
    size_bytes: int
    key_id: str
    created_unix_s: float


class SignedManifest(Wire):
    package_id: str
    manifest_json: str
    signature_b64: str
    key_id: str
    wrapped_key: str | None = Field(None, description="an encrypted package's content key, wrapped for this device")


class RollbackAuthorisation(Wire):
    """A signed permission to install a lower sequence (``tinymlops.fleet.packages.authorise_rollback``)."""

    payload_json: Annotated[str, Field(max_length=4096)]
    signature_b64: Annotated[str, Field(max_length=128)]


class DesiredStateRequest(Wire):
    package_id: PackageId
    device_ids: list[Name] | None = Field(None, max_length=100000)
    cohort: Name | None = None
    reason: Reason = ""
    rollback_authorisation: RollbackAuthorisation | None = Field(
        None, description="relayed to the devices: lets them go back to a package with a lower sequence")


class DesiredStateUpdated(Wire):
    updated: list[str]


class DesiredState(Wire):
    device_id: str
    package_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    poll_interval_s: float = 5.0
    rollback_authorisation: RollbackAuthorisation | None = None
    keyset_version: int = Field(0, description="latest signed key-set update: fetch /key-updates when newer")
    personalise: bool = Field(False, description="adapt the model on the device (the device's cohort is switched on)")


class PersonaliseRequest(Wire):
    enabled: bool
    reason: Annotated[str, Field(max_length=500)] = ""


class PersonaliseSetting(Wire):
    cohort: str
    enabled: bool
    reason: str
    set_unix_s: float
    devices: int | None = None


class KeyUpdate(Wire):
    """A signed key-set update (``tinymlops.fleet.keyset``): new signing keys, revocations, a version."""

    payload_json: Annotated[str, Field(max_length=65536)]
    key_id: Annotated[str, Field(max_length=32)]
    signature_b64: Annotated[str, Field(max_length=128)]


class KeyUpdateStored(Wire):
    version: int


class NewCredential(Wire):
    device_id: str
    credential: str = Field(description="replaces the current credential from its first use (shown once)")


class Feedback(Wire):
    """One labelled outcome a device learned later (opt-in): what it predicted and what was true."""

    timestamp: FiniteFloat
    prediction: int = Field(ge=0, le=100000)
    label: int = Field(ge=0, le=100000)


class TelemetryReport(Wire):
    """One window of a device's telemetry: a mergeable sketch, plus opt-in samples and feedback."""

    seq: int = Field(ge=0, le=2**62, description="per-device report number; a repeated seq is ignored")
    package_id: PackageId
    device_id: Name | None = Field(None, description="must be the authenticated device if given")
    sketch: Sketch
    samples: list[Annotated[list[FiniteFloat], Field(max_length=MAX_SAMPLE_VALUES)]] | None = Field(
        None, max_length=MAX_SAMPLES_PER_REPORT)
    feedback: list[Feedback] | None = Field(None, max_length=MAX_FEEDBACK_PER_REPORT)


class Accepted(Wire):
    accepted: bool = True


class DeploymentEventReport(Wire):
    kind: Literal["installed", "rejected", "rolled_back", "load_failed"]
    package_id: PackageId | None = None
    model_version: Annotated[str, Field(max_length=32)] | None = None
    reason: Reason = ""


class DeviceOut(Wire):
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
    revoked: bool


class TelemetryOut(Wire):
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


class MergedTelemetry(Wire):
    reports: int
    devices: int
    sketch: Sketch | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None


class EventOut(Wire):
    id: int
    device_id: str
    cohort: str
    target: str
    kind: str
    package_id: str | None
    model_version: str | None
    reason: str
    at_unix_s: float
