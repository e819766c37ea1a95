"""The simulated account: snapshots, instances, templates and operations of every zone.

:class:`SimState` is what the server's routes, the download handler and the fault control
endpoint call. It is put together from one mixin per resource over :class:`.account.Account`
(the records, their lock, the faults in force), each module stating its part of the state
machine as a client sees it:

- :mod:`.operations`: operations, and how they finish (lazily, on the injectable clock);
- :mod:`.exports`: export-snapshot, presigned URLs and the downloads they allow;
- :mod:`.snapshots`: adding, listing, deleting, taking (create-snapshot) and promoting snapshots;
- :mod:`.instances`: instances and the organisation's quotas;
- :mod:`.templates`: templates and register-template.
"""

from __future__ import annotations

from worker.simulator.instances import Instances
from worker.simulator.snapshots import Snapshots
from worker.simulator.templates import Templates


class SimState(Snapshots, Instances, Templates):
    """Everything the simulated API knows and does (see :class:`.account.Account` for the
    parameters). Every method takes the account's lock; any may be called from any thread."""
