"""A simulated device's agent: ``python -m tinymlops.sim.agent`` (and ``tinymlops agent``'s simulation options).

The same agent and options as ``tinymlops-agent`` (:mod:`tinymlops.fleet.agent_main`) plus the simulator's:
``--input synthetic`` (the default here: the vibration stream, with ``--seed`` and ``--drift-*``) and
``--emulate-target-timing`` (report the target's profiled latency/memory instead of this host's).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from tinymlops.fleet.agent_main import AgentOptions
from tinymlops.fleet.agent_main import main as agent_main
from tinymlops.fleet.inputs import InputSource
from tinymlops.fleet.install import Installed


class Simulation:
    """The simulator's part of an agent run (:class:`tinymlops.fleet.agent_main.Simulation`)."""

    def open_input(self, opts: AgentOptions) -> InputSource:
        """Open the synthetic vibration stream, drifted from ``--drift-after`` seconds on if a knob is set."""
        from pydantic import ValidationError

        from tinymlops.data.config import VibrationParams
        from tinymlops.errors import UsageError
        from tinymlops.sim.simulator import DriftSpec, cohort_stream
        from tinymlops.sim.streams import SyntheticStream

        try:
            drift = DriftSpec(gain=opts.drift_gain, offset=opts.drift_offset, noise_std=opts.drift_noise_std,
                              shaft_hz=opts.drift_shaft_hz)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise UsageError(f"--drift-{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
        print("input: the simulator's synthetic vibration stream (pass --input for a real sensor)", file=sys.stderr)
        base = VibrationParams()
        return SyntheticStream(base, opts.seed, cohort_stream(base, drift), opts.drift_after)

    def runner_factory(self, opts: AgentOptions) -> Callable[[Installed, str], Any] | None:
        """Return the emulating runner factory when ``--emulate-target-timing`` is set."""
        if not opts.emulate_target_timing:
            return None
        from tinymlops.fleet.install import open_model
        from tinymlops.sim.faults import DeviceRuntime

        return DeviceRuntime(open_model, emulate_timing=True, seed=opts.device_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a simulated device's agent (exit codes as ``tinymlops-agent``)."""
    return agent_main(argv, simulation=Simulation())


if __name__ == "__main__":
    sys.exit(main())
