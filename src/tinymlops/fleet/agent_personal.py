"""The edge agent's on-device personalisation (``tinymlops device agent --personalise``; :mod:`tinymlops.personalise`).

While serving, the agent keeps running moments of every model input and the device's own labelled samples (the
last ``max_labelled``; labels come from the input source, as feedback does). Every ``refit_every`` new labels it
re-chooses and re-fits the personalisation on them with the fleet's model, and serves through it. Labelled
inferences that arrive after a fit are scored first, by the fleet's model and the personalised one, and only those
two counts leave the device (:class:`~tinymlops.personalise.PersonalFigures` in the telemetry sketch). Samples and
the fitted head stay on the device: ``<state>/personal.json`` (0600) keeps the personalisation across restarts and
across package updates whose features and classes are unchanged; any other update starts afresh.

Fitting runs the model directly (not through the licence meter): they are the device's own inferences, at most
2 x ``max_labelled`` per refit.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import personalise
from tinymlops.fleet.install import atomic_write
from tinymlops.personalise import Moments, PersonalFigures, Personalisation

log = logging.getLogger("tinymlops.agent")


class PersonalRunner:
    """Serve through the device's personalisation: calibrated inputs in, head over the outputs."""

    __slots__ = ("owner", "runner")

    def __init__(self, runner: Any, owner: DevicePersonaliser) -> None:
        self.runner, self.owner = runner, owner

    def timed_predict(self, x: Any) -> Any:
        p = self.owner.current
        if p.kind == "none" or not self.owner.enabled:
            return self.runner.timed_predict(x)
        result = self.runner.timed_predict(p.features(x))
        if inspect.isawaitable(result):
            return self._finish(result, p)
        out, latency_ms = result
        return p.outputs(np.asarray(out, dtype=np.float64).reshape(-1)), latency_ms

    @staticmethod
    async def _finish(result: Any, p: Personalisation) -> tuple[np.ndarray, float]:
        out, latency_ms = await result
        return p.outputs(np.asarray(out, dtype=np.float64).reshape(-1)), latency_ms

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


class DevicePersonaliser:
    """One device's personalisation state; a no-op unless enabled (the agent's flag or the cohort's switch).

    Switched off, the device serves the fleet's model as it is and keeps what it learnt for when it is switched on
    again.
    """

    def __init__(self, state_dir: Path, enabled: bool, max_labelled: int = 50, min_labelled: int = 20,
                 min_inputs: int = 100, refit_every: int = 10,
                 kinds: tuple[personalise.Kind, ...] = personalise.KINDS) -> None:
        self.path = Path(state_dir) / "personal.json"
        self.enabled, self.kinds = enabled, kinds  # kinds: what the device can carry (MCU: calibration only)
        self.max_labelled, self.min_labelled = max_labelled, min_labelled
        self.min_inputs, self.refit_every = min_inputs, refit_every
        self.current = Personalisation()
        self.moments = Moments()
        self.labelled: deque[tuple[np.ndarray, int]] = deque(maxlen=max_labelled)
        self.new_labels = 0
        self.evaluated = self.correct_base = self.correct_personal = 0
        self.runner: Any = None
        self.key: dict[str, Any] = {}
        self.ref_mean = self.ref_std = np.zeros(0)

    @classmethod
    def for_runtime(cls, state_dir: Path, enabled: bool, runtime: str) -> DevicePersonaliser:
        """The personaliser of a device running ``runtime``: an MCU (TFLM) keeps a calibration only."""
        from tinymlops.runtimes import runtime_family

        return cls(state_dir, enabled, kinds=personalise.kinds_for_runtime(runtime_family(runtime)))

    def wrap(self, runner: Any, manifest: dict[str, Any]) -> Any:
        """Return the runner serving through the personalisation (the fleet's model as it is while disabled)."""
        if runner is None:
            return runner
        features = list(manifest["reference"]["features"])
        key = {"feature_names": [f["name"] for f in features], "class_names": list(manifest["class_names"])}
        self.ref_mean = np.asarray([f["mean"] for f in features], dtype=np.float64)
        self.ref_std = np.asarray([f["std"] for f in features], dtype=np.float64)
        if key != self.key:  # another model's features or classes: what was learnt does not apply
            self.key, self.current, self.moments = key, Personalisation(), Moments()
            self.labelled.clear()
            self._load()
        self.new_labels = 0
        self.runner = runner
        return PersonalRunner(runner, self)

    def observe(self, feats: np.ndarray, out: np.ndarray, label: int | None) -> None:
        """Account for one served inference (raw features, served probabilities, local label if any)."""
        if not self.enabled or self.runner is None:
            return
        self.moments.add(feats)
        if label is None or not 0 <= label < len(self.key["class_names"]):
            return
        if self.current.kind != "none":  # scored before it can be fitted on: out of sample
            base = np.asarray(self.runner.predict(np.asarray(feats, np.float32)[None]))[0]
            self.evaluated += 1
            self.correct_base += int(base.argmax() == label)
            self.correct_personal += int(out.argmax() == label)
        self.labelled.append((np.asarray(feats, dtype=np.float64), int(label)))
        self.new_labels += 1
        if (self.new_labels >= self.refit_every and len(self.labelled) >= self.min_labelled
                and self.moments.n >= self.min_inputs):
            self.refit()

    def refit(self) -> None:
        """Re-choose and re-fit the personalisation on the labelled samples held now."""
        x = np.stack([s for s, _ in self.labelled])
        y = np.asarray([lbl for _, lbl in self.labelled])
        self.new_labels = 0
        try:
            chosen = personalise.fit(x, y, self.runner.predict, self.moments, self.ref_mean, self.ref_std,
                                     kinds=self.kinds)
        except Exception as exc:  # a model fault while fitting: keep serving as before
            log.warning("personalisation not refitted: %s", exc)
            return
        if chosen.kind != self.current.kind:
            log.info("personalisation: %s (cv log-loss %s)", chosen.kind,
                     {k: round(v, 3) for k, v in chosen.cv_loss.items()})
        self.current = chosen
        self._save()

    def figures(self) -> PersonalFigures | None:
        """Return this window's counts (and start the next window), None when personalisation is off."""
        if not self.enabled or self.runner is None:
            return None
        out = PersonalFigures(kind=self.current.kind, labelled=self.current.labelled, evaluated=self.evaluated,
                              correct_base=self.correct_base, correct_personal=self.correct_personal)
        self.evaluated = self.correct_base = self.correct_personal = 0
        return out

    def _save(self) -> None:
        data = {"key": self.key, "personalisation": self.current.to_json()}
        atomic_write(self.path, json.dumps(data).encode())
        self.path.chmod(0o600)

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            if data.get("key") == self.key:
                loaded = Personalisation.from_json(data["personalisation"], len(self.key["feature_names"]),
                                                   len(self.key["class_names"]))
                if loaded.kind in self.kinds:  # saved under other rules (e.g. a head on an MCU): start afresh
                    self.current = loaded
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged: start afresh rather than serve it
            log.warning("personalisation state %s ignored: %s", self.path, exc)
