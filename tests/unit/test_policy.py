"""The policy file: issue 11's schema, and one-line errors naming file, policy and key."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.duration import Duration
from worker.errors import ConfigError, PolicyError
from worker.policy import KeepRules, load, loads, policies_path

WEB = "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"
DB = "0f0e0d0c-0b0a-4909-8887-868584838281"

# The example of issue 11, as written there (comments included).
ISSUE_EXAMPLE = """
[[policy]]
name = "web"                       # [a-z0-9][a-z0-9-]*, unique
zone = "ch-gva-2"
instances = ["6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c"]   # instance ids, and/or
labels = { backup = "nightly" }    # every instance in the zone whose labels include these
schedule = "0 3 * * *"             # cron, 5 fields, UTC; parsed by a maintained cron library
snapshots_keep = 2                 # snapshots this policy took that stay in the cloud (0: none)

[policy.keep]                      # archive retention; any subset; at least one rule
last = 3
hourly = 0
daily = 7
weekly = 4
monthly = 12
yearly = 2
within = "30d"                     # a duration: 1y2m3d4h style
"""


def policy_text(*lines: str, keep: str | None = "daily = 7", name: str = '"web"') -> str:
    """One policy with the required keys; ``lines`` are added to (or override) them,
    ``KEY = DROP`` removes one; ``keep`` is the body of [policy.keep] (None: no table)."""
    given = {line.split("=")[0].strip() for line in lines if "=" in line}
    base = {
        "name": f"name = {name}",
        "zone": 'zone = "ch-gva-2"',
        "instances": f'instances = ["{WEB}"]',
        "schedule": 'schedule = "0 3 * * *"',
        "snapshots_keep": "snapshots_keep = 2",
    }
    body = [v for k, v in base.items() if k not in given] + [ln for ln in lines if "=" in ln]
    body = [ln for ln in body if not ln.endswith("= DROP")]
    table = "" if keep is None else f"[policy.keep]\n{keep}\n"
    return "[[policy]]\n" + "\n".join(body) + "\n" + table


def test_the_issue_example_loads() -> None:
    policies = loads(ISSUE_EXAMPLE)
    (web,) = policies.policies
    assert web.name == "web" and web.zone == "ch-gva-2"
    assert web.instances == (WEB,)
    assert web.labels == (("backup", "nightly"),) and web.label_map == {"backup": "nightly"}
    assert web.schedule == "0 3 * * *" and web.snapshots_keep == 2
    assert web.keep == KeepRules(last=3, daily=7, weekly=4, monthly=12, yearly=2,
                                 within=Duration(days=30))  # fmt: skip
    assert web.verify is None and web.verify_subset is None
    assert web.next_runs(datetime(2026, 12, 1, 3, 0, tzinfo=UTC), 3) == [
        datetime(2026, 12, d, 3, 0, tzinfo=UTC) for d in (2, 3, 4)
    ]
    assert web.keep.describe() == (
        "keep 3 last, 7 daily, 4 weekly, 12 monthly, 2 yearly, all within 30d of the newest"
    )
    assert web.keep.as_dict() == {
        "last": 3, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 2, "within": "30d",
    }  # fmt: skip
    assert policies.get("web") is web


def test_every_zone_shape_of_the_api_is_a_zone() -> None:
    # ch-dk-2's city has two letters: a three-letter pattern refused it.
    for zone in ("ch-dk-2", "ch-xyz-9"):
        assert loads(policy_text(f'zone = "{zone}"')).get("web").zone == zone


def test_several_policies_and_the_scrub_keys() -> None:
    text = policy_text() + policy_text(
        'name = "db"',
        'zone = "de-fra-1"',
        "instances = DROP",
        'labels = { role = "db", backup = "weekly" }',
        'verify = "0 4 * * 0"',
        'verify_subset = "1/4"',
        keep='within = "1y2m"',
    )
    policies = loads(text, "p.toml")
    assert policies.names == ("web", "db")
    db = policies.get("db")
    assert db.instances == () and db.labels == (("backup", "weekly"), ("role", "db"))
    assert db.verify == "0 4 * * 0" and db.verify_subset == (1, 4)
    assert db.keep == KeepRules(within=Duration(years=1, months=2))
    with pytest.raises(
        PolicyError, match=r'^p\.toml: no policy named "mail" \(policies: web, db\)$'
    ):
        policies.get("mail")


def test_selects_by_id_or_by_every_label() -> None:
    text = policy_text('labels = { backup = "nightly", tier = "prod" }')
    web = loads(text).get("web")
    assert web.selects(WEB, {})
    assert web.selects(WEB.upper(), {})
    assert web.selects(DB, {"backup": "nightly", "tier": "prod", "team": "x"})
    assert not web.selects(DB, {"backup": "nightly"})
    assert not web.selects(DB, {"backup": "nightly", "tier": "dev"})
    ids_only = loads(policy_text()).get("web")
    assert not ids_only.selects(DB, {"backup": "nightly"})


def test_policies_path() -> None:
    env = {"SNAPARCHIVE_POLICIES": "/etc/snaparchive/policies.toml"}
    assert policies_path(env, "mine.toml") == Path("mine.toml")
    assert policies_path(env) == Path("/etc/snaparchive/policies.toml")
    assert policies_path({}) == Path("snaparchive.toml")
    assert policies_path({"SNAPARCHIVE_POLICIES": ""}, None) == Path("snaparchive.toml")
    with pytest.raises(ConfigError, match=r"^--policies: needs a file name$"):
        policies_path(env, "")


PREFIX = 'snaparchive.toml: policy "web": '
COUNT = "must be a whole number >= 0, got"

# (text, the whole expected message)
BAD_POLICIES = [
    (policy_text(keep="daily = -1"), PREFIX + f"keep.daily: {COUNT} -1"),
    (policy_text(keep="daily = true"), PREFIX + f"keep.daily: {COUNT} true"),
    (policy_text(keep="daily = 7.0"), PREFIX + f"keep.daily: {COUNT} 7.0"),
    (policy_text(keep='daily = "7"'), PREFIX + f'keep.daily: {COUNT} "7"'),
    (policy_text(keep="dialy = 7"), PREFIX + 'keep.dialy: unknown key (did you mean "daily"?)'),
    (policy_text(keep="keep_daily = 7"),
     PREFIX + 'keep.keep_daily: unknown key (did you mean "daily"?)'),
    (policy_text(keep="tags = 1"),
     PREFIX + "keep.tags: unknown key (known: last, hourly, daily, weekly, monthly, yearly, "
     "within)"),
    (policy_text(keep=""),
     PREFIX + "keep: needs at least one rule (last, hourly, daily, weekly, monthly, yearly, "
     "within)"),
    (policy_text(keep='within = "30 days"'),
     PREFIX + 'keep.within: must be a duration like 1y2m3d4h (years, months, days, hours), '
     'got "30 days"'),
    (policy_text(keep='within = "0d"'), PREFIX + 'keep.within: must be longer than 0, got "0d"'),
    (policy_text("schedulle = 1"), PREFIX + 'schedulle: unknown key (did you mean "schedule"?)'),
    (policy_text(keep=None), PREFIX + "keep: missing"),
    (policy_text("keep = 3", keep=None), PREFIX + "keep: must be a table ([policy.keep]), got 3"),
    (policy_text("schedule = DROP"), PREFIX + "schedule: missing"),
    (policy_text("snapshots_keep = DROP"), PREFIX + "snapshots_keep: missing"),
    (policy_text("snapshots_keep = -2"),
     PREFIX + "snapshots_keep: must be a whole number >= 0, got -2"),
    (policy_text('schedule = "0 3 * *"'),
     PREFIX + 'schedule: must be a cron expression with 5 fields (minute hour day month '
     'weekday), got "0 3 * *"'),
    (policy_text('schedule = "0 25 * * *"'),
     PREFIX + 'schedule: not a valid cron expression "0 25 * * *" (Bad hour)'),
    (policy_text('zone = "CH-GVA-2"'),
     PREFIX + 'zone: must be a zone name like ch-gva-2, got "CH-GVA-2"'),
    (policy_text("zone = DROP"), PREFIX + "zone: missing"),
    (policy_text("instances = DROP"),
     PREFIX + "instances: missing: a policy needs instances, labels or both"),
    (policy_text("instances = []"),
     PREFIX + "instances: must be a non-empty array of instance ids, got an array"),
    (policy_text(f'instances = ["{WEB}", "web-1"]'),
     PREFIX + 'instances[1]: must be an instance id (a UUID), got "web-1"'),
    (policy_text(f'instances = ["{WEB}", "{WEB.upper()}"]'),
     PREFIX + f"instances[1]: {WEB.upper()} is listed twice"),
    (policy_text("labels = {}"),
     PREFIX + "labels: must be a table of at least one label, got a table"),
    (policy_text("labels = { backup = 1 }"), PREFIX + "labels.backup: must be a string, got 1"),
    (policy_text('verify = "weekly"'),
     PREFIX + 'verify: must be a cron expression with 5 fields (minute hour day month '
     'weekday), got "weekly"'),
    (policy_text('verify_subset = "1/4"'),
     PREFIX + "verify_subset: needs verify (the scrub's schedule)"),
    (policy_text('verify = "0 4 * * 0"', 'verify_subset = "5/4"'),
     PREFIX + 'verify_subset: must be "N/T" with 1 <= N <= T, got "5/4"'),
    (policy_text('verify = "0 4 * * 0"', 'verify_subset = "0/4"'),
     PREFIX + 'verify_subset: must be "N/T" with 1 <= N <= T, got "0/4"'),
    (policy_text('verify = "0 4 * * 0"', "verify_subset = 4"),
     PREFIX + 'verify_subset: must be "N/T" with 1 <= N <= T, got 4'),
    # A bad or missing name: the policy is named by its place in the file.
    (policy_text(name='"Web"'),
     'snaparchive.toml: policy #1: name: must match [a-z0-9][a-z0-9-]*, got "Web"'),
    (policy_text(name='"-web"'),
     'snaparchive.toml: policy #1: name: must match [a-z0-9][a-z0-9-]*, got "-web"'),
    (policy_text("name = DROP"), "snaparchive.toml: policy #1: name: missing"),
    (policy_text("name = DROP", 'nmae = "web"'),
     'snaparchive.toml: policy #1: nmae: unknown key (did you mean "name"?)'),
    (policy_text() + policy_text(name='"db"') + policy_text(),
     'snaparchive.toml: policy #3: name: "web" is the name of policy #1 too'),
    # The file as a whole.
    ("", "snaparchive.toml: no [[policy]] in the file"),
    ("[policy]\nname = 'web'\n",
     "snaparchive.toml: policy: must be an array of tables ([[policy]])"),
    ('[[polcy]]\nname = "web"\n', 'snaparchive.toml: polcy: unknown key (did you mean "policy"?)'),
    ('[[policy]]\nname = "web"\nzone = ch-gva-2\n',
     "snaparchive.toml: line 3, column 8: invalid TOML: Invalid value"),
    ('[[policy]]\nname = "web', "snaparchive.toml: invalid TOML: Unterminated string (at end of "
     "document)"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_POLICIES)
def test_errors_name_file_policy_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert isinstance(caught.value, PolicyError)
    assert str(caught.value) == message


def test_error_parts_are_attributes() -> None:
    with pytest.raises(PolicyError) as caught:
        loads(policy_text(keep="daily = -1"), "p.toml")
    error = caught.value
    assert (error.path, error.policy, error.key) == ("p.toml", '"web"', "keep.daily")
    assert error.problem == "must be a whole number >= 0, got -1"


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(ISSUE_EXAMPLE, encoding="utf-8")
    assert load(path).names == ("web",)
    assert load(str(path)).path == str(path)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    def message(path: Path, problem: str) -> str:
        return "^" + re.escape(f"{path}: {problem}") + "$"

    missing = tmp_path / "snaparchive.toml"
    no_file = "no such file (set SNAPARCHIVE_POLICIES or --policies)"
    with pytest.raises(PolicyError, match=message(missing, no_file)):
        load(missing)
    with pytest.raises(PolicyError, match=message(tmp_path, "cannot read: Is a directory")):
        load(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n[[policy]]\n")
    with pytest.raises(PolicyError, match=message(latin1, "not UTF-8 text (byte 5)")):
        load(latin1)
    broken = tmp_path / "broken.toml"
    broken.write_text('[[policy]]\nname = "web"\nname = "db"\n', encoding="utf-8")
    toml_error = "line 3, column 12: invalid TOML: Cannot overwrite a value"
    with pytest.raises(PolicyError, match=message(broken, toml_error)):
        load(broken)
