"""Rollout plan (``kind: rollout``): canary stages, their evidence requirements and the gate thresholds.

Every stage widens the share of each target's devices running that target's candidate; a stage passes only when
its gate has enough evidence (devices, inferences, bake time) and no check fails. Times are seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tinymlops.config import Strict


class StageConfig(Strict):
    """One canary stage: how many devices, how much evidence, how long, how fast."""

    name: str | None = Field(None, description="label in tables and history; default: '<percent>%'")
    percent: float = Field(gt=0, le=100, description="share of the target's eligible devices on the candidate")
    min_devices: int = Field(1, ge=1, description="devices that must report on the candidate before a pass")
    min_inferences: int = Field(100, ge=1, description="candidate inferences needed before a pass")
    bake_s: float = Field(30.0, ge=0, description="time all stage devices must run the candidate before a pass")
    deadline_s: float = Field(600.0, gt=0, description="after this (from stage start) an inconclusive gate holds "
                                                       "and the hold timeout starts counting")
    rate_devices_per_min: float = Field(600.0, gt=0, description="at most this many devices switched per minute")

    @property
    def label(self) -> str:
        return self.name or f"{self.percent:g}%"

    @model_validator(mode="after")
    def _bake_before_deadline(self) -> StageConfig:
        if self.bake_s >= self.deadline_s:
            raise ValueError(f"bake_s ({self.bake_s}) must be shorter than deadline_s ({self.deadline_s})")
        return self


class GateThresholds(Strict):
    """Thresholds of the stage gate (see :mod:`tinymlops.rollout.gates`)."""

    max_rejection_rate: float = Field(0.0, ge=0, le=1, description="share of stage devices refusing the package")
    max_silent_rate: float = Field(0.25, ge=0, le=1, description="share of devices running the candidate that call "
                                                                 "in but send no telemetry (crash loop, hang)")
    report_grace_s: float = Field(15.0, gt=0, description="time after assignment a device gets to install and "
                                                          "send its first report before it counts as silent")
    offline_after_s: float = Field(30.0, gt=0, description="a device not seen for this long is offline")
    min_reporting_share: float = Field(0.8, gt=0, le=1, description="share of stage devices that must report "
                                                                    "before a pass (offline ones hold the gate)")
    max_error_rate: float = Field(0.02, ge=0, le=1, description="errors / (inferences + errors)")
    min_error_samples: int = Field(50, ge=1, description="inferences + errors needed to judge the error rate")
    latency_factor: float = Field(2.0, ge=1, description="p95 may exceed the expectation by this factor...")
    latency_tolerance_ms: float = Field(2.0, ge=0, description="...or by this many ms, whichever is larger")
    min_latency_samples: int = Field(50, ge=1)
    max_prediction_psi: float = Field(0.25, gt=0, description="PSI of predicted classes, candidate vs control")
    max_confidence_drop: float = Field(0.10, gt=0, le=1, description="drop of mean top-class confidence")
    min_control_inferences: int = Field(100, ge=1, description="control inferences needed to compare with it; "
                                                               "fewer: compare with the reference profile")
    min_feedback: int = Field(30, ge=1, description="labelled feedback needed to judge accuracy")
    max_accuracy_drop: float = Field(0.10, gt=0, le=1, description="accuracy drop vs control/reference")


class RolloutConfig(Strict):
    """A staged rollout plan applied to every target in parallel."""

    kind: Literal["rollout"] = "rollout"
    stages: list[StageConfig] = Field(min_length=1)
    gates: GateThresholds = Field(default_factory=lambda: GateThresholds.model_validate({}))
    gate_interval_s: float = Field(10.0, gt=0, description="how often the controller re-evaluates a stage")
    window_s: float = Field(900.0, gt=0, description="the gate looks at telemetry of the last window_s seconds of "
                                                     "the stage (bounds the cost of long stages on big fleets)")
    hold_timeout_s: float = Field(1800.0, ge=0, description="how long an inconclusive stage holds after its "
                                                            "deadline before on_timeout applies")
    on_timeout: Literal["fail", "stop"] = Field("fail", description="fail: roll back; stop: halt where it is")
    lease_s: float = Field(15.0, gt=0, description="a controller that stops heartbeating loses its rollout after "
                                                   "this long (a restarted controller then resumes it)")

    @model_validator(mode="after")
    def _increasing(self) -> RolloutConfig:
        pcts = [s.percent for s in self.stages]
        if any(b <= a for a, b in zip(pcts, pcts[1:], strict=False)):
            raise ValueError(f"stage percents must increase strictly, got {pcts}")
        if pcts[-1] != 100:
            raise ValueError(f"the last stage must reach 100 percent, got {pcts[-1]}")
        return self
