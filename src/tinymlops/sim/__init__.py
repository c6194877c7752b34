"""Simulation: simulated fleets, synthetic sensor streams, fault injection, the demo model and the demo fleet.

Nothing in production code (``fleet``, ``rollout``, ``monitor``, ...) imports this package
(``tests/unit/test_boundaries.py`` checks it): simulated devices run the production agent unchanged and get their
sensor windows, faults and emulated target timing from here, through the agent's input-source and runtime
interfaces.
"""
