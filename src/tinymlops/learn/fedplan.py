"""Federated-learning plan (pure): options, the devices' non-IID local data, and the DP budget.

NumPy and pydantic only; Flower and TensorFlow are imported by :mod:`tinymlops.learn.federated`. The privacy
accountant (Google's ``dp-accounting``, the one Flower's ``dp`` extra names) is imported inside the two DP
functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tinymlops.data import vibration
from tinymlops.data.config import VibrationParams
from tinymlops.errors import ConfigError

#: the RDP orders the accountant evaluates: integers (fractional orders below 2 fail to converge for sampled
#: Gaussians and are dropped with a warning by dp-accounting); fixed here so figures repeat
RDP_ORDERS = (*range(2, 64), 128, 256, 512)


class Cohort(BaseModel):
    """A group of devices sharing a sensor condition (the vibration generator's covariate-shift knobs)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    gain: float = Field(1.0, gt=0)
    offset: float = 0.0
    noise_std: float | None = Field(None, ge=0)
    shaft_hz: float | None = Field(None, gt=0)

    def params(self, base: VibrationParams) -> VibrationParams:
        """Return the generator's knobs for this cohort (unset knobs keep the dataset's value)."""
        upd: dict[str, float] = {"gain": base.gain * self.gain, "offset": base.offset + self.offset}
        if self.noise_std is not None:
            upd["noise_std"] = self.noise_std
        if self.shaft_hz is not None:
            upd["shaft_hz"] = self.shaft_hz
        return base.model_copy(update=upd)


#: four production lines: as deployed, sensors reading 15 % high (line-b of the demo), noisier, slower shaft
DEFAULT_COHORTS = (Cohort(name="line-a"), Cohort(name="line-b", gain=1.15),
                   Cohort(name="line-c", noise_std=0.2), Cohort(name="line-d", shaft_hz=23.0))


class FederatedOptions(BaseModel):
    """How one federated run is set up (CLI flags and the flow's parameters map onto these fields)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(10, ge=1, le=1000)
    clients: int = Field(20, ge=2, le=1000, description="simulated devices, each with its own local data")
    clients_per_round: int | None = Field(None, ge=1, description="sampled per round; default: all clients")
    strategy: Literal["fedavg", "fedprox", "fedavgm"] = "fedavg"
    proximal_mu: float = Field(0.1, ge=0, description="FedProx's proximal weight (fedprox only)")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="FedAvgM's server momentum (fedavgm only)")
    local_epochs: int = Field(1, ge=1, le=100)
    samples_per_client: int = Field(100, ge=8, le=100_000, description="local windows per device (vibration)")
    label_alpha: float = Field(0.5, gt=0, description="Dirichlet concentration of each device's class mix "
                                                       "(small: few classes per device; large: IID)")
    cohorts: list[Cohort] = Field(default_factory=lambda: list(DEFAULT_COHORTS), min_length=1)
    dp_epsilon: float | None = Field(None, gt=0, description="target epsilon: the noise multiplier is calibrated")
    dp_noise_multiplier: float | None = Field(None, ge=0, description="explicit noise (epsilon is then reported)")
    dp_clip: float = Field(1.0, gt=0, description="L2 clipping norm of each client's update")
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    seed: int = 7

    @model_validator(mode="after")
    def _check(self) -> FederatedOptions:
        if self.clients_per_round is not None and self.clients_per_round > self.clients:
            raise ValueError(f"clients_per_round ({self.clients_per_round}) exceeds clients ({self.clients})")
        if self.dp_epsilon is not None and self.dp_noise_multiplier is not None:
            raise ValueError("give dp_epsilon or dp_noise_multiplier, not both")
        if len({c.name for c in self.cohorts}) != len(self.cohorts):
            raise ValueError("cohort names must be unique")
        return self

    @property
    def per_round(self) -> int:
        return self.clients_per_round or self.clients

    @property
    def dp(self) -> bool:
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None


def parse_options(values: dict[str, object]) -> FederatedOptions:
    """Validate options; raise ConfigError naming the field and what was expected (one line)."""
    try:
        return FederatedOptions.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "options"
        raise ConfigError(f"federated {where}: {e['msg']} (got {e.get('input')!r})") from None


@dataclass(frozen=True)
class ClientData:
    """One device's local (raw) data: it never leaves the client in a federated run."""

    cid: int
    cohort: str
    X: np.ndarray
    y: np.ndarray

    @property
    def class_counts(self) -> list[int]:
        return np.bincount(self.y, minlength=len(vibration.CLASSES)).tolist()


def class_mixes(n_clients: int, n_classes: int, alpha: float, seed: int) -> np.ndarray:
    """Draw each device's class mix from Dirichlet(alpha) (label skew; rows sum to 1)."""
    return np.random.default_rng(seed).dirichlet(np.full(n_classes, alpha), size=n_clients)


def cohort_of(cid: int, opts: FederatedOptions) -> Cohort:
    """Assign devices to cohorts round-robin (client i belongs to cohort i mod number of cohorts)."""
    return opts.cohorts[cid % len(opts.cohorts)]


def vibration_clients(base: VibrationParams, opts: FederatedOptions) -> list[ClientData]:
    """Draw every device's local windows: its cohort's sensor shift and its own skewed class mix (non-IID)."""
    mixes = class_mixes(opts.clients, len(vibration.CLASSES), opts.label_alpha, opts.seed)
    out = []
    for cid in range(opts.clients):
        c = cohort_of(cid, opts)
        it = vibration.stream(c.params(base), opts.seed * 100_003 + cid, tuple(float(w) for w in mixes[cid]))
        pairs = [next(it) for _ in range(opts.samples_per_client)]
        out.append(ClientData(cid, c.name, np.stack([w for w, _ in pairs]),
                              np.asarray([lbl for _, lbl in pairs], dtype=np.int64)))
    return out


def cohort_tests(base: VibrationParams, cohorts: list[Cohort], per_class: int, seed: int
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Draw a balanced held-out test set per cohort (the fleet's conditions the global model must serve)."""
    return {c.name: vibration.generate(c.params(base), per_class, seed + 7_919 * (i + 1))
            for i, c in enumerate(cohorts)}


def partition_labels(y: np.ndarray, n_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Split sample indices over clients with a Dirichlet(alpha) label skew (any dataset); every client gets one.

    Per class, its samples are dealt to clients in proportions drawn from Dirichlet(alpha). Raises ConfigError
    when there are fewer samples than clients.
    """
    if len(y) < n_clients:
        raise ConfigError(f"federated clients: {n_clients} clients but only {len(y)} training samples")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, alpha))) * len(idx)).astype(int)[:-1]
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    empty = [k for k, p in enumerate(parts) if not p]
    for k in empty:  # move one sample from the largest client so no device is empty
        donor = max(range(n_clients), key=lambda j: len(parts[j]))
        parts[k].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _event(noise_multiplier: float, sample_rate: float, rounds: int):  # type: ignore[no-untyped-def]
    import dp_accounting

    g = dp_accounting.GaussianDpEvent(noise_multiplier)
    one = g if sample_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(sample_rate, g)
    return dp_accounting.SelfComposedDpEvent(one, rounds)


def dp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Return the client-level epsilon of ``rounds`` Gaussian aggregations (RDP accountant, dp-accounting).

    Clients are sampled with probability ``sample_rate`` per round (Poisson sampling is the accountant's model;
    Flower samples a fixed number, which the same rate approximates). Noise 0 gives infinity.
    """
    if noise_multiplier <= 0:
        return float("inf")
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(_event(noise_multiplier, sample_rate, rounds))
    return float(acc.get_epsilon(delta))


def dp_noise_for_epsilon(epsilon: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Return the smallest noise multiplier whose epsilon (as :func:`dp_epsilon`) stays within ``epsilon``."""
    import dp_accounting
    from dp_accounting import rdp

    z = dp_accounting.calibrate_dp_mechanism(
        lambda: rdp.RdpAccountant(list(RDP_ORDERS)), lambda z: _event(z, sample_rate, rounds), epsilon, delta,
        dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=1e-4)
    return float(z)
