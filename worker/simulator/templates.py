"""Templates of the simulated API: get, list and register-template.

- register-template: the simulator reads ``url`` over HTTP (:mod:`.fetch`, any host) and
  hashes what it read. The operation stays ``pending`` until the URL is read and the usual
  delay has passed, then ends ``success`` with ``reference.id`` the new private template (its
  ``size`` the bytes read) when the MD5 equals ``checksum``, or ``failure``: reason
  ``incorrect`` for a checksum mismatch or a URL its server refused (4xx), ``unavailable``
  for one that failed (5xx), could not be reached or broke off, ``interrupted`` when the
  simulator stopped meanwhile, each with a one-line ``message`` naming the host, never the URL.
  These reasons are the simulator's choice: Exoscale documents none for registrations.
  Templates belong to the zone of the endpoint used.
- list-templates: ``visibility`` ``public`` (the default, as in egoscale) or ``private``, and
  ``family``; the zone's public Ubuntu template always exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from concurrent.futures import wait as wait_futures
from typing import Any
from urllib.parse import urlsplit

from worker.simulator.account import ApiProblem, boolean_field, required_field, string_field
from worker.simulator.operations import Operations
from worker.simulator.records import TemplateRecord


class Templates(Operations):
    """The template calls."""

    def get_template(self, zone: str, template_id: str) -> dict[str, Any]:
        """get-template."""
        with self.lock:
            self._tick()
            template = self._templates.get(template_id)
            if template is None or template.zone != zone:
                raise ApiProblem(404, f"template {template_id} not found")
            return template.body()

    def list_templates(self, zone: str, query: Mapping[str, str]) -> dict[str, Any]:
        """list-templates of ``zone``: ``visibility`` (default ``public``) and ``family``.

        Raises:
          ApiProblem: 400 for a visibility other than ``public`` or ``private``.
        """
        visibility = query.get("visibility", "public")
        if visibility not in ("public", "private"):
            raise ApiProblem(400, f"visibility must be public or private, got {visibility!r}")
        family = query.get("family")
        with self.lock:
            self._tick()
            self._public_template(zone)  # a zone always offers its public template
            return {
                "templates": [
                    template.body()
                    for template in self._templates.values()
                    if template.zone == zone
                    and template.visibility == visibility
                    and (family is None or template.family == family)
                ]
            }

    def register_template(self, zone: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """register-template: start reading ``url``; returns the pending operation.

        Raises:
          ApiProblem: 400 for a missing or malformed field; 503 when no fetcher runs.
        """
        name = required_field(body, "name", max_length=255)
        url = required_field(body, "url")
        checksum = required_field(body, "checksum")
        ssh_key_enabled = boolean_field(body, "ssh-key-enabled", required=True)
        password_enabled = boolean_field(body, "password-enabled", required=True)
        boot_mode = string_field(body, "boot-mode") or "legacy"
        if boot_mode not in ("legacy", "uefi"):
            raise ApiProblem(400, f"boot-mode must be legacy or uefi, got {boot_mode!r}")
        size = body.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ApiProblem(400, "size must be a positive integer")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiProblem(400, "url must be an HTTP or HTTPS URL")  # not quoted: a credential
        template = TemplateRecord(
            id=str(uuid.uuid4()),
            zone=zone,
            name=name,
            description=string_field(body, "description", max_length=255) or "",
            created_at=self.clock(),
            size=size or 1,  # the bytes read, once read
            checksum=checksum.lower(),
            url=url,
            boot_mode=boot_mode,
            default_user=string_field(body, "default-user", max_length=255),
            ssh_key_enabled=bool(ssh_key_enabled),
            password_enabled=bool(password_enabled),
            build=string_field(body, "build", max_length=255),
            version=string_field(body, "version", max_length=255),
            maintainer=string_field(body, "maintainer", max_length=255),
        )
        with self.lock:
            self._tick()
            if self.fetcher is None:
                raise ApiProblem(503, "the template service is not running")
            faults = self._global_faults
            unreachable, mismatch = faults.take_registration_faults() if faults else (False, False)
            fetch = self.fetcher.start(url, unreachable=unreachable, mismatch=mismatch)
            self._fetches = [f for f in self._fetches if not f.done()] + [fetch]
            operation = self._start(
                zone, "register", "template", template.id, waits_for=fetch, payload=template
            )
            if faults is not None and faults.faults.register_seconds is not None:
                self._operations[operation["id"]].done_at = (
                    self.clock() + faults.faults.register_seconds
                )
            return operation

    def wait_for_fetches(self, timeout: float) -> bool:
        """Wait until every template URL being read has been read; return whether they were."""
        with self.lock:
            pending = [fetch for fetch in self._fetches if not fetch.done()]
        _, not_done = wait_futures(pending, timeout=timeout)
        with self.lock:
            self._fetches = [fetch for fetch in self._fetches if not fetch.done()]
        return not not_done
