"""Synthetic sensor input for simulated devices: the vibration stream as an agent input source, with drift.

:class:`SyntheticStream` implements :class:`tinymlops.fleet.inputs.InputSource` over
:func:`tinymlops.data.vibration.stream`; every window carries its true class (the simulator knows it), which
becomes labelled feedback on devices that opted in. Drift is a change of the generator's knobs (gain, offset,
noise, shaft speed) from ``drift_after_s`` on, or at once with :meth:`SyntheticStream.set_drift`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from tinymlops.data.config import VibrationParams
from tinymlops.fleet.inputs import Window

#: the drifted stream continues from another seed so it does not replay the base stream's windows
DRIFT_SEED_OFFSET = 1_000_003


class SyntheticStream:
    """An endless seeded vibration stream; switches to ``drift`` knobs ``drift_after_s`` after it was created."""

    def __init__(self, params: VibrationParams | None = None, seed: int = 0, drift: VibrationParams | None = None,
                 drift_after_s: float = 0.0) -> None:
        self.params = params or VibrationParams()
        self.seed = seed
        self.drift, self.drift_after_s = drift, drift_after_s
        self.drifted = False
        self._started = time.monotonic()
        self._it: Iterator[tuple[np.ndarray, int]] | None = None

    def set_drift(self, params: VibrationParams) -> None:
        """Switch to drifted knobs now."""
        self.drift, self.drift_after_s, self.drifted = params, 0.0, False

    def _stream(self) -> Iterator[tuple[np.ndarray, int]]:
        from tinymlops.data.vibration import stream

        if self.drift is not None and not self.drifted and (
                time.monotonic() - self._started >= self.drift_after_s):
            self.drifted = True
            self._it = stream(self.drift, self.seed + DRIFT_SEED_OFFSET)
        if self._it is None:
            self._it = stream(self.params, self.seed)
        return self._it

    def read(self) -> Window | None:
        values, label = next(self._stream())
        return Window(values, int(label))

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        self._it = None
