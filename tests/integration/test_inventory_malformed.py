"""``snaparchive snapshots list`` when a cloud answers something other than its documented
shape: one line naming that provider, exit status 1, and every other provider's rows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.fakes.gcore import FakeGcore
from tests.fakes.genesiscloud import FakeGenesisCloud
from tests.fakes.instavm import FakeInstaVM
from tests.fakes.server import FakeApi, Fault
from worker.cli import main

pytestmark = pytest.mark.integration

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def clouds(
    monkeypatch, genesis_api: FakeGenesisCloud, gcore_api: FakeGcore, instavm_api: FakeInstaVM
) -> dict[str, FakeApi]:
    """The three fakes, one snapshot each, and the environment pointing at them."""
    genesis_api.add(name="genesis-row")
    gcore_api.add(7, name="gcore-row")
    instavm_api.add(name="instavm-row")
    env = {
        "GENESISCLOUD_TOKEN": genesis_api.token,
        "GENESISCLOUD_API_ENDPOINT": genesis_api.url,
        "GCORE_API_KEY": gcore_api.api_key,
        "GCORE_PROJECT_ID": str(gcore_api.project_id),
        "GCORE_REGION_ID": "7",
        "GCORE_API_ENDPOINT": gcore_api.url,
        "INSTAVM_API_KEY": instavm_api.api_key,
        "INSTAVM_API_ENDPOINT": instavm_api.url,
    }
    for name in ("EXOSCALE_API_KEY", "SNAPARCHIVE_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {"genesiscloud": genesis_api, "gcore": gcore_api, "instavm": instavm_api}


def listing(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """Run ``snapshots list``; return its status, stdout and stderr's error lines."""
    code = main(["snapshots", "list", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, [line for line in err.splitlines() if not line.startswith("note: ")]


def snapshot_of(provider: str, **fields: object) -> dict[str, object]:
    """A well-formed snapshot of ``provider``'s API, with ``fields`` replaced."""
    fake = {"genesiscloud": FakeGenesisCloud, "gcore": FakeGcore, "instavm": FakeInstaVM}
    return {**fake[provider]().add(), **fields}


def page(provider: str, *items: object) -> object:
    """A one-page listing of ``items`` as ``provider``'s API shapes it."""
    if provider == "genesiscloud":
        return {"snapshots": list(items), "total_count": len(items)}
    if provider == "gcore":
        return {"results": list(items), "count": len(items)}
    return list(items)


SIZE = {"genesiscloud": "size", "gcore": "size", "instavm": "size_bytes"}
ROWS = {"genesiscloud": "genesis-row", "gcore": "gcore-row", "instavm": "instavm-row"}

#: name -> (provider -> the answer served, the problem the error line names)
CASES = {
    "JSON nested past the recursion limit": (
        lambda p: Fault(200, text=DEEP),
        "unexpected RecursionError",
    ),
    "a size past any disk": (
        lambda p: Fault(200, page(p, snapshot_of(p, **{SIZE[p]: 10**400}))),
        "has {size!r} out of range",
    ),
    "a negative size": (
        lambda p: Fault(200, page(p, snapshot_of(p, **{SIZE[p]: -5}))),
        "has a negative {size!r}",
    ),
    "an empty id": (
        lambda p: Fault(200, page(p, snapshot_of(p, id=""))),
        "has an empty 'id'",
    ),
    "a size that is a string": (
        lambda p: Fault(200, page(p, snapshot_of(p, **{SIZE[p]: "20"}))),
        "has {size!r} of type a string",
    ),
    "a missing id": (
        lambda p: Fault(200, page(p, {k: v for k, v in snapshot_of(p).items() if k != "id"})),
        "has no 'id'",
    ),
    "a snapshot that is a list": (lambda p: Fault(200, page(p, [1])), "is a list, not an object"),
    "truncated JSON": (lambda p: Fault(200, text='{"snapshots": [{"id'), "HTTP 200 with"),
    "an HTML page": (lambda p: Fault(200, text="<html>maintenance</html>"), "an HTML page"),
}


@pytest.mark.parametrize("provider", ["genesiscloud", "gcore", "instavm"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_answer_is_one_line_and_the_others_still_print(clouds, capsys, provider, case):
    answer, problem = CASES[case]
    clouds[provider].fail_next(answer(provider))
    code, out, errors = listing(capsys)
    assert code == 1
    (line,) = errors
    assert line.startswith(f"error: {provider}: ")
    assert problem.format(size=SIZE[provider]) in line
    others = {name for p, name in ROWS.items() if p != provider}
    assert {name for name in ROWS.values() if name in out} == others


class HostileExoscale(FakeApi):
    """Answers ``GET /{zone}/v2/snapshot`` with ``answers[zone]`` (text), else no snapshots."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, str] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/{zone}/v2/snapshot", self.list)]

    def authorized(self, request: web.Request) -> web.Response | None:
        return None

    async def list(self, request: web.Request) -> web.Response:
        text = self.answers.get(request.match_info["zone"], '{"snapshots": []}')
        return web.Response(text=text, content_type="application/json")


@pytest.fixture
def exoscale(monkeypatch, clouds) -> Iterator[HostileExoscale]:
    fake = HostileExoscale()
    with fake.running():
        monkeypatch.setenv("EXOSCALE_API_KEY", "EXOtest")
        monkeypatch.setenv("EXOSCALE_API_SECRET", "secret")
        monkeypatch.setenv("EXOSCALE_API_ENDPOINT", f"{fake.url}/{{zone}}/v2")
        yield fake


EXO = {"id": "6a1c2b4e-3f5d-4e7a-9b8c-0d1e2f3a4b5c", "state": "ready", "name": "exo-row"}


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (DEEP, "unexpected RecursionError"),
        # Nested deep enough to pass the decoder but not a copy of the record.
        (
            json.dumps({"snapshots": [{**EXO, "tags": "X"}]}).replace('"X"', "[" * 900 + "]" * 900),
            "unexpected RecursionError",
        ),
        (json.dumps({"snapshots": [{**EXO, "size": 10**400}]}), "has 'size' out of range"),
        (json.dumps({"snapshots": [{**EXO, "size": -1}]}), "has a negative 'size'"),
        (json.dumps({"snapshots": [{**EXO, "size": "10"}]}), "has 'size' of type a string"),
        (json.dumps({"snapshots": [{**EXO, "id": ""}]}), "has an empty 'id'"),
    ],
    ids=["deep JSON", "deep record", "huge size", "negative size", "string size", "empty id"],
)
def test_a_malformed_exoscale_zone_is_one_line(exoscale, capsys, answer, problem):
    good = {**EXO, "id": "7b2d3c5f-4a6e-4f8b-8c9d-1e2f3a4b5c6d", "size": 10}
    exoscale.answers = {"ch-gva-2": answer, "de-fra-1": json.dumps({"snapshots": [good]})}
    code, out, errors = listing(capsys)
    assert code == 1
    (line,) = errors
    assert line.startswith("error: exoscale: ") and problem in line
    assert "7b2d3c5f-4a6e-4f8b-8c9d-1e2f3a4b5c6d" in out  # the zone that answered well
    assert all(row in out for row in ROWS.values())
