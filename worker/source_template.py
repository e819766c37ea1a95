"""How a snapshot's instance booted: read when it is archived, used when it is restored.

An archive records its source instance's template settings in the manifest (``template``:
boot mode, SSH key and password login, default user), because by the time it is restored as
a template the instance, and maybe its template, may be gone. ``exo compute
instance-template register --from-snapshot`` copies the same four fields from the
instance's template. :func:`lookup_source_template` reads them; :func:`registration_settings`
turns what a manifest recorded (or nothing, for older archives) and the operator's overrides
into what register-template is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.errors import SnaparchiveError, describe
from worker.exoscale import ExoscaleClient
from worker.manifest import BOOT_MODES, SourceTemplate

logger = logging.getLogger(__name__)

#: What Exoscale (and ``exo compute instance-template register``) assume when nothing is
#: said: legacy boot, password and SSH key login both enabled, no default user.
DEFAULT_BOOT_MODE = "legacy"
DEFAULT_SSH_KEY_ENABLED = True
DEFAULT_PASSWORD_ENABLED = True


async def lookup_source_template(
    client: ExoscaleClient, zone: str, instance_id: str | None
) -> SourceTemplate | None:
    """Return the template settings of instance ``instance_id`` of ``zone``, or ``None``.

    get-instance, then get-template of its template. The archive must not fail for want of
    them: an instance or template that is gone, or an API that fails, gives ``None`` (logged
    at INFO), and the manifest records ``template: null``.

    Parameters:
      client: The Exoscale client.
      zone: The snapshot's zone.
      instance_id: The snapshot's instance (``None``: unknown, so is the template).
    """
    if instance_id is None:
        logger.info("%s: the snapshot names no instance; its template is not recorded", zone)
        return None
    try:
        instance = await client.get_instance(zone, instance_id)
        if instance.template_id is None:
            logger.info(
                "%s/%s: the instance names no template; none is recorded", zone, instance_id
            )
            return None
        template = await client.get_template(zone, instance.template_id)
    except SnaparchiveError as error:
        logger.info(
            "%s/%s: the instance's template cannot be read (%s); the archive records none",
            zone,
            instance_id,
            describe(error),
        )
        return None
    boot_mode = template.boot_mode if template.boot_mode in BOOT_MODES else DEFAULT_BOOT_MODE
    return SourceTemplate(
        boot_mode=boot_mode,
        ssh_key_enabled=_flag(template.ssh_key_enabled, DEFAULT_SSH_KEY_ENABLED),
        password_enabled=_flag(template.password_enabled, DEFAULT_PASSWORD_ENABLED),
        default_user=template.default_user or None,
    )


def _flag(value: bool | None, default: bool) -> bool:
    return default if value is None else value


@dataclass(frozen=True)
class Overrides:
    """What the operator asked for on the command line; ``None``: as the source had it.

    Parameters:
      boot_mode: ``--boot-mode legacy|uefi``.
      default_user: ``--default-user U``.
      password_enabled: ``False`` with ``--disable-password``.
      ssh_key_enabled: ``False`` with ``--disable-ssh-key``.
    """

    boot_mode: str | None = None
    default_user: str | None = None
    password_enabled: bool | None = None
    ssh_key_enabled: bool | None = None

    def to_dict(self) -> dict[str, str | bool | None]:
        return {
            "boot_mode": self.boot_mode,
            "default_user": self.default_user,
            "password_enabled": self.password_enabled,
            "ssh_key_enabled": self.ssh_key_enabled,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Overrides:
        """Read :meth:`to_dict` output (a job record's); wrong types count as not given."""

        def pick(name: str, kind: type) -> object:
            value = data.get(name)
            return value if isinstance(value, kind) else None

        boot_mode = pick("boot_mode", str)
        user = pick("default_user", str)
        password, ssh_key = pick("password_enabled", bool), pick("ssh_key_enabled", bool)
        return cls(
            boot_mode=boot_mode if boot_mode in BOOT_MODES else None,
            default_user=user if isinstance(user, str) else None,
            password_enabled=password if isinstance(password, bool) else None,
            ssh_key_enabled=ssh_key if isinstance(ssh_key, bool) else None,
        )


def registration_settings(recorded: SourceTemplate | None, overrides: Overrides) -> SourceTemplate:
    """The settings a restored template is registered with: each one as the operator
    overrode it, else as the manifest recorded it, else Exoscale's default (legacy boot,
    password and SSH key login enabled, no default user)."""
    base = recorded or SourceTemplate(
        boot_mode=DEFAULT_BOOT_MODE,
        ssh_key_enabled=DEFAULT_SSH_KEY_ENABLED,
        password_enabled=DEFAULT_PASSWORD_ENABLED,
        default_user=None,
    )
    return SourceTemplate(
        boot_mode=overrides.boot_mode or base.boot_mode,
        ssh_key_enabled=_flag(overrides.ssh_key_enabled, base.ssh_key_enabled),
        password_enabled=_flag(overrides.password_enabled, base.password_enabled),
        default_user=overrides.default_user or base.default_user,
    )
