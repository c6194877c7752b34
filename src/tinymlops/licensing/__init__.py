"""Offline pay-per-query licensing: signed quota tokens, a tamper-evident usage chain, server reconciliation.

* :mod:`.tokens` — licence tokens (Ed25519, signed on the registry host with the package signing key): device id,
  device receipt key, model, kind (``per-query`` | ``subscription`` | ``unlimited``), count, expiry, grace, sequence.
* :mod:`.chain` — usage receipts: a hash chain signed with the device's own Ed25519 key, appended and fsynced
  before the inferences they cover are served (write-ahead blocks), replayed to recover after a crash.
* :mod:`.meter` — what the device enforces offline: which licence serves the model, exact quota, expiry against a
  clock that never goes back, blocks sized so metering costs well under 2 % of inference time.
* :mod:`.reconcile` — what the service checks: signatures, chain links (a restored old state forks the chain),
  duplicates, gaps, per-licence arithmetic, clock rollback; per licence/device/customer usage.

Pure logic only: no HTTP, no database (the fleet service and agent wire it in: ``tinymlops.fleet.licences``,
``tinymlops.fleet.service.routes_licence``, ``tinymlops.fleet.agent_licence``).
"""
