"""Instances and quotas of the simulated API.

- delete-instance: the operation's success removes the instance and, as Exoscale does, every
  snapshot of it (their download URLs answer 404 from then on).
- list-instances: the instances of the zone. Its ``labels`` query parameter is an untyped
  string in the spec; the simulator reads it as ``key=value`` pairs separated by spaces (the
  form Exoscale's own karpenter provider sends) and lists the instances that carry all of
  them; anything else is a 400. snaparchive itself filters on its side and does not send it.
  ``ip-address`` matches the public IP; ``manager-id``/``manager-type`` match nothing (no
  instance pools here).
- Quotas are per organisation: ``snapshot`` counts the snapshots of every zone (``deleting``
  ones until they are gone), ``template`` the private templates, ``user_vm`` the instances
  (the names exoscale/cli uses). Limits are -1 (unlimited) unless set; the snapshot limit is
  ``snapshot_quota``, which create-snapshot enforces (:mod:`.snapshots`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from worker.argtypes import check_uuid
from worker.settings import EXOSCALE_ZONES
from worker.simulator.account import (
    MAX_SIZE_GIB,
    MIN_SIZE_GIB,
    ApiProblem,
    check_labels,
    check_quota_limit,
)
from worker.simulator.operations import Operations
from worker.simulator.records import InstanceRecord, TemplateRecord
from worker.units import GiB

#: Quota entities the simulator counts (names as in exoscale/cli's ``limits``).
QUOTA_ENTITIES = ("snapshot", "template", "user_vm")


def parse_label_filter(text: str) -> dict[str, str]:
    """Read list-instances' ``labels`` parameter: ``key=value`` pairs separated by spaces.

    Raises:
      ApiProblem: 400 when a pair is not ``key=value``.
    """
    wanted = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiProblem(400, f"labels must be key=value pairs separated by spaces: {pair!r}")
        wanted[key] = value
    return wanted


class Instances(Operations):
    """The instance and quota calls, and :meth:`add_instance` for tests and ``simulate``."""

    def add_instance(
        self,
        instance_id: str,
        zone: str = "ch-gva-2",
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        disk_size: int = MIN_SIZE_GIB,
        template_id: str | None = None,
        boot_mode: str | None = None,
        default_user: str | None = None,
        ssh_key_enabled: bool | None = None,
        password_enabled: bool | None = None,
    ) -> InstanceRecord:
        """Add an instance (see :meth:`worker.simulator.Simulator.add_instance`).

        Raises:
          ValueError: On a malformed id, name, label, size or zone, a duplicate id, an unknown
            template, or template settings given together with ``template_id``.
        """
        instance_id = check_uuid(instance_id, "instance id")
        if zone not in EXOSCALE_ZONES:
            raise ValueError(f"unknown zone {zone!r} (one of {', '.join(EXOSCALE_ZONES)})")
        if name is not None and not 1 <= len(name) <= 255:
            raise ValueError("instance name must be 1..255 characters")
        checked_labels = check_labels(labels)
        if isinstance(disk_size, bool) or not isinstance(disk_size, int):
            raise ValueError(f"disk size must be a whole number of GiB, got {disk_size!r}")
        if not MIN_SIZE_GIB <= disk_size <= MAX_SIZE_GIB:
            raise ValueError(f"disk size must be {MIN_SIZE_GIB}..{MAX_SIZE_GIB} GiB")
        if boot_mode not in (None, "legacy", "uefi"):
            raise ValueError(f"boot mode must be legacy or uefi, got {boot_mode!r}")
        if default_user is not None and not 1 <= len(default_user) <= 255:
            raise ValueError("default user must be 1..255 characters")
        settings = (boot_mode, default_user, ssh_key_enabled, password_enabled)
        custom = any(value is not None for value in settings)
        if custom and template_id is not None:
            raise ValueError("give template_id or the template's settings, not both")
        with self.lock:
            if instance_id in self._instances:
                raise ValueError(f"instance {instance_id} already exists")
            if template_id is not None:
                template_id = check_uuid(template_id, "template id")
                template = self._templates.get(template_id)
                if template is None or template.zone != zone:
                    raise ValueError(f"no template {template_id} in zone {zone}")
            elif custom:
                # The instance was built from a private template with these settings.
                public = self._public_template(zone)
                template = TemplateRecord(
                    id=self._derived_id("template", instance_id),
                    zone=zone,
                    name=f"{name or 'vm-' + instance_id[:8]} image",
                    description="custom template",
                    created_at=self.clock(),
                    size=10 * GiB,
                    checksum=hashlib.md5(instance_id.encode()).hexdigest(),
                    boot_mode=boot_mode or "legacy",
                    default_user=default_user,
                    ssh_key_enabled=public.ssh_key_enabled
                    if ssh_key_enabled is None
                    else ssh_key_enabled,
                    password_enabled=(
                        public.password_enabled if password_enabled is None else password_enabled
                    ),
                )
                self._templates[template.id] = template
                template_id = template.id
            return self._instance(instance_id, zone, disk_size, name, template_id, checked_labels)

    def get_instance(self, zone: str, instance_id: str) -> dict[str, Any]:
        """get-instance."""
        with self.lock:
            self._tick()
            instance = self._instance_in(zone, instance_id)
            return instance.body(self._templates[instance.template_id])

    def list_instances(self, zone: str, query: Mapping[str, str]) -> dict[str, Any]:
        """list-instances, filtered by the ``labels`` and ``ip-address`` query parameters.

        Raises:
          ApiProblem: 400 for a ``labels`` value that is not ``key=value`` pairs.
        """
        wanted = parse_label_filter(query.get("labels", ""))
        ip_address = query.get("ip-address")
        managed = "manager-id" in query or "manager-type" in query
        with self.lock:
            self._tick()
            found = [
                instance.list_body(self._templates[instance.template_id])
                for instance in self._instances.values()
                if instance.zone == zone
                and not managed  # no instance pools: no instance has a manager
                and (ip_address is None or instance.public_ip == ip_address)
                and all(instance.labels.get(k) == v for k, v in wanted.items())
            ]
            return {"instances": found}

    def delete_instance(self, zone: str, instance_id: str) -> dict[str, Any]:
        """delete-instance: returns the pending operation; its snapshots go with it."""
        with self.lock:
            self._tick()
            instance = self._instance_in(zone, instance_id)
            return self._start(zone, "delete-instance", "instance", instance.id)

    # -- quotas -----------------------------------------------------------------------------

    def _quota(self, entity: str) -> dict[str, Any]:
        if entity == "snapshot":
            usage, limit = len(self._snapshots), self.snapshot_quota
        elif entity == "template":
            usage = sum(t.visibility == "private" for t in self._templates.values())
            limit = -1
        elif entity == "user_vm":
            usage, limit = len(self._instances), -1
        else:
            raise ApiProblem(404, f"quota {entity} not found")
        return {"resource": entity, "usage": usage, "limit": limit}

    def get_quota(self, entity: str) -> dict[str, Any]:
        """get-quota: the organisation's ``usage`` and ``limit`` (-1: unlimited) of ``entity``."""
        with self.lock:
            self._tick()
            return self._quota(entity)

    def list_quotas(self) -> dict[str, Any]:
        """list-quotas."""
        with self.lock:
            self._tick()
            return {"quotas": [self._quota(entity) for entity in QUOTA_ENTITIES]}

    def set_snapshot_quota(self, limit: int) -> None:
        """Set the snapshot limit (-1: unlimited). Raises ValueError for a bad limit."""
        limit = check_quota_limit(limit)
        with self.lock:
            self.snapshot_quota = limit
