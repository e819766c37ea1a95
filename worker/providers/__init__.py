"""Snapshot inventories of the clouds operators keep snapshots in.

One adapter per cloud (:mod:`.exoscale`, :mod:`.genesiscloud`, :mod:`.gcore`,
:mod:`.instavm`) maps its API to :class:`~worker.providers.base.SnapshotRecord`;
:mod:`.inventory` gathers them all and marks which are archived; :mod:`.cli` prints them.
"""
