"""Operations: how every asynchronous call of the simulated API ends.

A call that starts one (export, delete, create-snapshot, promote, register, delete-instance)
records it ``pending`` with a time it may finish at (``export_seconds`` from now) and, for some,
a future it waits for (an export's MD5, a registration's read of its URL). Operations finish
lazily: when any call looks at the account after their time has come and their future is
done, :meth:`Operations._tick` ends them, ``success`` with the effect of the call, or
``failure`` with a ``reason`` and a ``message``. ``export_stuck`` and ``register_stuck`` faults
keep theirs pending for as long as they are set.
"""

from __future__ import annotations

import uuid
from typing import Any

from worker.simulator.account import Account, ApiProblem
from worker.simulator.fetch import FetchResult
from worker.simulator.records import ExportRecord, OperationRecord, SnapshotRecord


class Operations(Account):
    """Starting, finishing and reading operations."""

    def _tick(self) -> None:
        now = self.clock()
        for operation in list(self._operations.values()):
            if operation.state != "pending" or now < operation.done_at:
                continue
            if operation.waits_for is not None and not operation.waits_for.done():
                continue
            faults = self._faults_for(operation.snapshot_id)
            if faults is not None:
                if operation.kind == "export" and faults.faults.export_stuck:
                    continue
                if operation.kind == "register" and faults.faults.register_stuck:
                    continue
            self._finish(operation)

    def _fail(self, operation: OperationRecord, reason: str, message: str) -> None:
        operation.state = "failure"
        operation.reason = reason
        operation.message = message

    def _finish(self, operation: OperationRecord) -> None:
        snapshot = self._snapshots.get(operation.snapshot_id or "")
        if operation.fail_reason is not None:
            self._fail(operation, operation.fail_reason, f"{operation.kind} failed")
            if snapshot is not None and snapshot.state == "exporting":
                snapshot.state = "ready"
            return
        if operation.kind == "register":
            self._finish_registration(operation)
            return
        operation.state = "success"
        if operation.kind == "export" and snapshot is not None:
            if snapshot.export is None:
                assert operation.waits_for is not None  # every export waits for its MD5
                snapshot.export = ExportRecord(str(uuid.uuid4()), operation.waits_for.result())
            snapshot.state = "exported"
        elif operation.kind == "delete" and snapshot is not None:
            self._remove_snapshot(snapshot)
        elif operation.kind == "delete-instance":
            instance = self._instances.pop(operation.resource_id, None)
            for snapshot_id in instance.snapshot_ids if instance else []:
                # Exoscale deletes an instance's snapshots with it.
                self._snapshots.pop(snapshot_id, None)
                self._faults.pop(snapshot_id, None)
        elif operation.kind == "create-snapshot" and snapshot is not None:
            snapshot.state = "ready"
        elif operation.payload is not None:
            if operation.waits_for is not None:
                operation.payload.checksum = operation.waits_for.result()
            self._templates[operation.payload.id] = operation.payload

    def _remove_snapshot(self, snapshot: SnapshotRecord) -> None:
        del self._snapshots[snapshot.id]
        self._faults.pop(snapshot.id, None)
        instance = self._instances.get(snapshot.instance_id)
        if instance is not None:
            instance.snapshot_ids.remove(snapshot.id)

    def _finish_registration(self, operation: OperationRecord) -> None:
        assert operation.waits_for is not None and operation.payload is not None
        fetched: FetchResult = operation.waits_for.result()
        template = operation.payload
        if fetched.error is not None or fetched.md5 is None:
            self._fail(operation, fetched.reason or "unavailable", fetched.error or "no data")
        elif fetched.md5 != template.checksum:
            self._fail(
                operation,
                "incorrect",
                f"checksum mismatch: expected {template.checksum}, got {fetched.md5} "
                f"({fetched.size} bytes read from {fetched.host})",
            )
        elif fetched.size == 0:
            self._fail(operation, "incorrect", f"the template from {fetched.host} is empty")
        else:
            operation.state = "success"
            template.size = fetched.size
            self._templates[template.id] = template

    def _start(
        self,
        zone: str,
        kind: str,
        resource: str,
        resource_id: str,
        snapshot_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        operation = OperationRecord(
            id=str(uuid.uuid4()),
            zone=zone,
            kind=kind,
            resource=resource,
            resource_id=resource_id,
            snapshot_id=snapshot_id,
            done_at=self.clock() + self.export_seconds,
            **extra,
        )
        self._operations[operation.id] = operation
        return operation.body()

    def get_operation(self, zone: str, operation_id: str) -> dict[str, Any]:
        """get-operation."""
        with self.lock:
            self._tick()
            operation = self._operations.get(operation_id)
            if operation is None or operation.zone != zone:
                raise ApiProblem(404, f"operation {operation_id} not found")
            return operation.body()

    def operation_snapshot(self, operation_id: str) -> str | None:
        """Return the id of the snapshot an operation concerns, if any."""
        with self.lock:
            operation = self._operations.get(operation_id)
            return operation.snapshot_id if operation else None
