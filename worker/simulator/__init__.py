"""A simulated Exoscale API v2 for development, tests and runbook rehearsal.

It speaks the real API over HTTP (``http://HOST:PORT/{zone}/v2``, EXO2-HMAC-SHA256 signatures,
the official JSON shapes), serves exported disk files from presigned URLs, and injects faults.
The product never imports it; ``snaparchive simulate`` and the tests do. For example::

    sim = Simulator(key="EXOtest", secret="test-secret")
    sim.add_instance("0b7e5d3c-2a19-4f08-8e6d-5c4b3a291807", labels={"backup": "nightly"})
    sim.add_snapshot("6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c", 64 * MiB)
    sim.set_faults(Faults(truncate_at=10 * MiB))
    with sim.running():
        async with ExoscaleClient(sim.settings()) as client:
            ...

Modules:

- :mod:`.server`: the :class:`Simulator`; :mod:`.serving` runs its HTTP server in a thread.
- :mod:`.state`: the account, its calls and state machine, put together from :mod:`.account`
  (records, lock, faults in force), :mod:`.operations`, :mod:`.exports`, :mod:`.snapshots`,
  :mod:`.instances` (and quotas) and :mod:`.templates`.
- :mod:`.api` (API routes), :mod:`.download` (presigned downloads), :mod:`.control` (the fault
  control endpoint), :mod:`.fetch` (register-template reading its URL).
- :mod:`.faults`, :mod:`.disk` (generated images), :mod:`.presign`, :mod:`.records` (resources
  and their JSON).
- :mod:`.cli`: ``snaparchive simulate`` (its argument types are :mod:`worker.argtypes`).
"""

from worker.simulator.faults import Faults
from worker.simulator.server import Simulator

__all__ = ["Faults", "Simulator"]
