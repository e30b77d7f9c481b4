"""The OneRoster REST client against the SIS simulator: it pages, authenticates and resumes.

The simulator runs as its own process (``python -m simulators.oneroster``) over the 1EdTech
sample CSV sets, verifying OAuth 1.0a signatures with oauthlib while the client signs with
authlib, so neither side's mistake is mirrored by the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.sis_roster.rest_client import (
    Cursor,
    OneRosterRestClient,
    OneRosterRestError,
)
from tests.support.oneroster import DELTA_V1P2, FULL_V1P1, OneRosterSimProcess, csv_ids

VERSIONS = ("1.1", "1.2")
USERS_PATH = {"1.1": "/ims/oneroster/v1p1/users", "1.2": "/ims/oneroster/rostering/v1p2/users"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneRosterSimProcess]:
    with OneRosterSimProcess(tmp_path_factory.mktemp("oneroster")) as process:
        yield process


@pytest.fixture
def fresh(sim: OneRosterSimProcess) -> OneRosterSimProcess:
    """The simulator with its data as on disk and an empty request log."""
    sim.reset()
    return sim


def _ids(records: Any) -> list[str]:
    return [record["sourcedId"] for record in records]


def _bearer(sim: OneRosterSimProcess) -> dict[str, str]:
    """A token obtained by hand (not by the client under test)."""
    answer = httpx.post(
        f"{sim.base_url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(sim.key, sim.secret),
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.mark.parametrize("version", VERSIONS)
def test_reads_every_user_across_pages(fresh: OneRosterSimProcess, version: str) -> None:
    expected = csv_ids(FULL_V1P1, "users")
    assert len(expected) == 6
    with OneRosterRestClient(fresh.settings(version, page_size=2)) as client:
        reader = client.iter_collection("users")
        users = list(reader)

    assert sorted(_ids(users)) == sorted(expected)
    assert len(users) == len(set(_ids(users)))
    assert reader.total == 6
    pages = fresh.requests(USERS_PATH[version])
    assert [(p["query"]["limit"], p["query"]["offset"]) for p in pages] == [
        ("2", "0"),
        ("2", "2"),
        ("2", "4"),
    ]
    assert all(p["status"] == 200 for p in pages)
    if version == "1.1":
        assert {p["auth"] for p in pages} == {"OAuth"}
        assert fresh.requests("/oauth/token") == []
    else:
        assert {p["auth"] for p in pages} == {"Bearer"}
        assert len(fresh.requests("/oauth/token")) == 1  # one token, cached across pages


@pytest.mark.parametrize("version", VERSIONS)
def test_stops_at_x_total_count_without_an_empty_page(
    fresh: OneRosterSimProcess, version: str
) -> None:
    # 6 users in pages of 3: a client going by short pages only would ask a third time.
    with OneRosterRestClient(fresh.settings(version, page_size=3)) as client:
        reader = client.iter_collection("users")
        assert len(list(reader)) == 6
    assert reader.pages == 2
    assert len(fresh.requests(USERS_PATH[version])) == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_delta_returns_exactly_the_touched_users(fresh: OneRosterSimProcess, version: str) -> None:
    since = datetime.now(UTC)
    touched = ["usr-222-66778899", "usr-222-987654"]
    fresh.touch(touched, givenName="Renamed")
    with OneRosterRestClient(fresh.settings(version, page_size=1)) as client:
        users = list(client.iter_collection("users", since=since))

    assert sorted(_ids(users)) == sorted(touched)
    assert {u["givenName"] for u in users} == {"Renamed"}
    filters = {p["query"].get("filter") for p in fresh.requests(USERS_PATH[version])}
    assert len(filters) == 1
    (sent,) = filters
    assert sent is not None and sent.startswith("dateLastModified>'") and sent.endswith("Z'")


def test_load_serves_another_data_set_as_a_sis_that_changed_since(
    fresh: OneRosterSimProcess, tmp_path: Path
) -> None:
    undated = "usr-222-66778899"  # its CSV row has no dateLastModified: served as of the load
    gone = "usr-222-567891"
    with OneRosterRestClient(fresh.settings("1.2", page_size=10)) as client:
        before = {u["sourcedId"]: u for u in client.iter_collection("users")}
        since = datetime.now(UTC)
        shutil.copytree(FULL_V1P1, tmp_path / "now")
        users = tmp_path / "now" / "users.csv"
        kept = [line for line in users.read_text().splitlines(True) if not line.startswith(gone)]
        users.write_text("".join(kept))
        answer = fresh.post("/_sim/load", {"data": str(tmp_path / "now")})
        after = {u["sourcedId"]: u for u in client.iter_collection("users")}
        unchanged_since = list(client.iter_collection("users", since=since))

        # A record it lacks is no longer listed; one left as it was keeps its
        # dateLastModified, so a delta sees nothing.
        assert answer["loaded"]["users"] == 5
        assert set(after) == set(before) - {gone}
        assert after[undated]["dateLastModified"] == before[undated]["dateLastModified"]
        assert unchanged_since == []

        # Changed without a dateLastModified of its own: changed as of this load.
        users.write_text(users.read_text().replace(",Mary,Jones,", ",Marie,Jones,"))
        fresh.post("/_sim/load", {"data": str(tmp_path / "now")})
        changed = list(client.iter_collection("users", since=since))
    assert [(u["sourcedId"], u["givenName"]) for u in changed] == [(undated, "Marie")]

    refused = fresh.control.post("/_sim/load", json={"data": str(tmp_path / "nowhere")})
    assert refused.status_code == 400 and "not a folder" in refused.text
    fresh.reset()  # back to the set it started with
    with OneRosterRestClient(fresh.settings("1.2", page_size=10)) as client:
        assert gone in _ids(client.iter_collection("users"))


def test_v11_signature_with_hmac_sha1_is_accepted(fresh: OneRosterSimProcess) -> None:
    settings = fresh.settings("1.1", signature_method="HMAC-SHA1", page_size=4)
    with OneRosterRestClient(settings) as client:
        assert len(list(client.iter_collection("users"))) == 6


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_secret_is_a_401_naming_the_endpoint_not_the_secret(
    fresh: OneRosterSimProcess, version: str
) -> None:
    wrong = "definitely-not-the-secret-4242"
    with (
        OneRosterRestClient(fresh.settings(version, client_secret=wrong)) as client,
        pytest.raises(OneRosterRestError) as caught,
    ):
        list(client.iter_collection("users"))

    error = caught.value
    assert error.status == 401
    endpoint = "/ims/oneroster/v1p1/users" if version == "1.1" else "/oauth/token"
    assert error.endpoint == endpoint
    assert endpoint in str(error)
    for text in (str(error), repr(error)):
        assert wrong not in text
        assert fresh.secret not in text
    if version == "1.1":
        assert error.code_minor == "unauthorisedrequest"
        assert len(fresh.requests(USERS_PATH[version])) == 1  # a refused signature is final


def test_revoked_token_is_renewed_once(fresh: OneRosterSimProcess) -> None:
    with OneRosterRestClient(fresh.settings("1.2", page_size=2)) as client:
        first = client.iter_collection("users")
        assert len([next(first), next(first)]) == 2
        fresh.revoke()
        rest = list(first)
        assert len(rest) == 4
        assert client.tokens_fetched == 2

    pages = fresh.requests(USERS_PATH["1.2"])
    assert [p["status"] for p in pages] == [200, 401, 200, 200]
    assert len(fresh.requests("/oauth/token")) == 2


def test_a_core_scoped_token_may_not_read_demographics(fresh: OneRosterSimProcess) -> None:
    with (
        OneRosterRestClient(fresh.settings("1.2")) as client,
        pytest.raises(OneRosterRestError) as caught,
    ):
        list(client.iter_collection("demographics"))
    assert caught.value.status == 403
    assert caught.value.code_minor == "forbidden"
    assert len(fresh.requests("/demographics")) == 1  # not retried


@pytest.mark.parametrize("version", VERSIONS)
def test_failed_pages_are_retried(fresh: OneRosterSimProcess, version: str) -> None:
    with OneRosterRestClient(fresh.settings(version, page_size=2)) as client:
        reader = client.iter_collection("users")
        first = next(reader)
        fresh.fail(2, status=503)
        users = [first, *reader]

    assert sorted(_ids(users)) == sorted(csv_ids(FULL_V1P1, "users"))
    statuses = [p["status"] for p in fresh.requests(USERS_PATH[version])]
    assert statuses == [200, 503, 503, 200, 200]


def test_retry_after_is_honoured(fresh: OneRosterSimProcess) -> None:
    with OneRosterRestClient(fresh.settings("1.2", page_size=6)) as client:
        fresh.fail(1, status=429, retry_after=1)
        assert len(list(client.iter_collection("users"))) == 6

    refused, served = fresh.requests(USERS_PATH["1.2"])
    assert (refused["status"], served["status"]) == (429, 200)
    assert served["at"] - refused["at"] >= 0.95  # not the settings' 50 ms backoff ceiling


def test_persistent_failure_is_an_error_after_the_attempts(fresh: OneRosterSimProcess) -> None:
    fresh.fail(10, status=500)
    with (
        OneRosterRestClient(fresh.settings("1.1", max_attempts=3)) as client,
        pytest.raises(OneRosterRestError) as caught,
    ):
        list(client.iter_collection("users"))
    assert caught.value.status == 500
    assert "/ims/oneroster/v1p1/users" in str(caught.value)
    assert len(fresh.requests(USERS_PATH["1.1"])) == 3


@pytest.mark.parametrize("version", VERSIONS)
def test_resume_after_a_crash_returns_the_rest_without_duplicates(
    fresh: OneRosterSimProcess, version: str, tmp_path: Path
) -> None:
    saved = tmp_path / "cursor.json"
    seen: list[str] = []
    since = datetime(2020, 1, 1, tzinfo=UTC)  # a delta, so the cursor carries its instant
    client = OneRosterRestClient(fresh.settings(version, page_size=2))
    reader = client.iter_collection("users", since=since)
    for user in reader:
        seen.append(user["sourcedId"])
        saved.write_text(reader.cursor.to_json())
        if len(seen) == 3:  # mid-page: the fourth user was fetched but never handed over
            break
    client.close()  # the process dies here; only the saved cursor survives
    del client, reader

    cursor = Cursor.from_json(saved.read_text())
    assert (cursor.collection, cursor.offset, cursor.since) == ("users", 3, since)
    with OneRosterRestClient(fresh.settings(version, page_size=2)) as client:
        rest = _ids(client.iter_collection("users", resume=cursor))

    assert len(rest) == 3
    assert not set(rest) & set(seen)
    assert sorted(seen + rest) == sorted(csv_ids(FULL_V1P1, "users"))
    offsets = [p["query"]["offset"] for p in fresh.requests(USERS_PATH[version])]
    assert offsets == ["0", "2", "3", "5"]


CRASHING_READER = """
import os, sys
from pathlib import Path
from connectors.sis_roster.rest_client import OneRosterRestClient, OneRosterRestSettings
settings = OneRosterRestSettings(
    base_url=sys.argv[1], version="1.1", page_size=3,
    client_id=os.environ["TEST_ONEROSTER_KEY"], client_secret=os.environ["TEST_ONEROSTER_SECRET"],
)
saved = Path(sys.argv[2])
reader = OneRosterRestClient(settings).iter_collection("users")
for count, user in enumerate(reader, start=1):
    saved.write_text(reader.cursor.to_json())
    if count == 4:
        os._exit(9)  # killed mid-read: no close, no cleanup
"""


def test_resume_after_the_reading_process_dies(fresh: OneRosterSimProcess, tmp_path: Path) -> None:
    saved = tmp_path / "cursor.json"
    env = {**os.environ, "TEST_ONEROSTER_KEY": fresh.key, "TEST_ONEROSTER_SECRET": fresh.secret}
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_READER, fresh.base_url, str(saved)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 9, child.stderr.decode(errors="replace")[-2000:]

    cursor = Cursor.from_json(saved.read_text())
    assert cursor.offset == 4
    with OneRosterRestClient(fresh.settings("1.1", page_size=3)) as client:
        rest = _ids(client.iter_collection("users", resume=cursor))
    assert len(rest) == 2
    expected = sorted(csv_ids(FULL_V1P1, "users"))
    assert rest == expected[4:]  # the client asks for sourcedId order
    assert [p["query"]["offset"] for p in fresh.requests(USERS_PATH["1.1"])] == ["0", "3", "4"]


def test_resume_refuses_a_cursor_of_another_collection(fresh: OneRosterSimProcess) -> None:
    with OneRosterRestClient(fresh.settings("1.2")) as client, pytest.raises(ValueError):
        client.iter_collection("users", resume=Cursor("enrollments", 2))


def test_malformed_filter_is_a_400_in_the_1edtech_shape(fresh: OneRosterSimProcess) -> None:
    answer = httpx.get(
        fresh.base_url + USERS_PATH["1.2"],
        params={"filter": "dateLastModified>yesterday"},
        headers=_bearer(fresh),
    )
    assert answer.status_code == 400
    body = answer.json()
    assert body["imsx_codeMajor"] == "failure"
    assert body["imsx_severity"] == "error"
    minor = body["imsx_CodeMinor"]["imsx_codeMinorField"][0]
    assert minor == {
        "imsx_codeMinorFieldName": "TargetEndSystem",
        "imsx_codeMinorFieldValue": "invalid_filter_field",
    }


@pytest.mark.parametrize(
    ("params", "code_minor"),
    [
        ({"filter": "noSuchField='x'"}, "invalid_filter_field"),
        ({"filter": "dateLastModified>'not-a-date'"}, "invalid_filter_field"),
        (
            {"filter": "status='active' AND role='student' OR role='teacher'"},
            "invalid_filter_field",
        ),
        ({"sort": "shoeSize"}, "invalid_sort_field"),
        ({"fields": "givenName,shoeSize"}, "invalid_selection_field"),
        ({"limit": "0"}, "invaliddata"),
        ({"offset": "-1"}, "invaliddata"),
    ],
)
def test_bad_queries_are_400s(
    fresh: OneRosterSimProcess, params: dict[str, str], code_minor: str
) -> None:
    answer = httpx.get(fresh.base_url + USERS_PATH["1.2"], params=params, headers=_bearer(fresh))
    assert answer.status_code == 400
    assert (
        answer.json()["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"]
        == code_minor
    )


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (USERS_PATH["1.1"], {}),
        (USERS_PATH["1.2"], {}),
        (USERS_PATH["1.2"], {"Authorization": "Bearer forged-token"}),
    ],
)
def test_unauthenticated_requests_are_401s(
    fresh: OneRosterSimProcess, path: str, headers: dict[str, str]
) -> None:
    answer = httpx.get(fresh.base_url + path, headers=headers)
    assert answer.status_code == 401
    assert "WWW-Authenticate" in answer.headers
    assert (
        answer.json()["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"]
        == "unauthorisedrequest"
    )


def test_filter_sort_fields_and_single_objects(fresh: OneRosterSimProcess) -> None:
    headers = _bearer(fresh)
    root = fresh.base_url + "/ims/oneroster/rostering/v1p2"
    students = httpx.get(
        f"{root}/users",
        params={"filter": "roles.role='student'", "sort": "familyName", "orderBy": "desc",
                "fields": "givenName,familyName"},
        headers=headers,
    )  # fmt: skip
    assert students.status_code == 200
    assert students.headers["X-Total-Count"] == "3"
    body = students.json()["users"]
    assert [u["familyName"] for u in body] == ["Jones", "Jones", "Brown"]
    assert set(body[0]) == {"givenName", "familyName"}  # exactly the fields asked for
    assert _ids(httpx.get(f"{root}/students", headers=headers).json()["users"]) == _ids(
        httpx.get(
            f"{root}/users", params={"filter": "roles.role='student'"}, headers=headers
        ).json()["users"]
    )

    def total(filter_text: str) -> int:
        answer = httpx.get(f"{root}/users", params={"filter": filter_text}, headers=headers)
        assert answer.status_code == 200, answer.text
        return int(answer.headers["X-Total-Count"])

    assert total("familyName='Brown' OR familyName='Smith'") == 2
    assert total("status='active'") == 6
    fresh.touch(["usr-222-567891"], status="tobedeleted")
    assert total("status='active'") == 5
    assert total("status='tobedeleted' AND roles.org.sourcedId='org-sch-222-456'") == 1

    one = httpx.get(f"{root}/users/usr-222-123456", headers=headers)
    assert one.status_code == 200
    user = one.json()["user"]
    assert user["primaryOrg"] == {
        "href": f"{root}/orgs/org-sch-222-456",
        "sourcedId": "org-sch-222-456",
        "type": "org",
    }
    assert "password" not in user
    missing = httpx.get(f"{root}/users/no-such-user", headers=headers)
    assert missing.status_code == 404
    assert (
        missing.json()["imsx_CodeMinor"]["imsx_codeMinorField"][0]["imsx_codeMinorFieldValue"]
        == "unknownobject"
    )


def test_v11_users_carry_role_and_org_refs(fresh: OneRosterSimProcess) -> None:
    with OneRosterRestClient(fresh.settings("1.1")) as client:
        users = {u["sourcedId"]: u for u in client.iter_collection("users")}
        enrollments = list(client.iter_collection("enrollments"))
    john = users["usr-222-123456"]
    assert john["role"] == "teacher"
    assert john["enabledUser"] == "true"
    assert [org["sourcedId"] for org in john["orgs"]] == ["org-sch-222-456"]
    assert john["orgs"][0]["href"].endswith("/ims/oneroster/v1p1/orgs/org-sch-222-456")
    assert "password" not in john
    assert sorted(_ids(enrollments)) == sorted(csv_ids(FULL_V1P1, "enrollments"))
    assert all(e["user"]["type"] == "user" and e["class"]["type"] == "class" for e in enrollments)


def test_serves_a_v1p2_csv_set_including_demographics(tmp_path: Path) -> None:
    with OneRosterSimProcess(tmp_path, data=DELTA_V1P2) as sim:
        roster_scope = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster.readonly"
        with OneRosterRestClient(sim.settings("1.2", scope=roster_scope)) as client:
            users = list(client.iter_collection("users"))
            demographics = list(client.iter_collection("demographics"))
            classes = list(client.iter_collection("classes"))
        with OneRosterRestClient(sim.settings("1.1")) as client:
            v11_users = list(client.iter_collection("users"))

    assert _ids(users) == csv_ids(DELTA_V1P2, "users")
    (bruce,) = users
    assert bruce["roles"][0]["role"] == "student"
    assert bruce["roles"][0]["org"]["sourcedId"] == "ORG_1"
    assert bruce["userProfiles"][0]["credentials"] == [{"type": "login", "username": "brucewayne"}]
    assert _ids(demographics) == csv_ids(DELTA_V1P2, "demographics")
    assert demographics[0]["birthDate"] == "2010-04-17"
    assert classes[0]["course"]["sourcedId"] == "COURSE_001"
    assert v11_users[0]["role"] == "student"


class _Recording(httpx.BaseTransport):
    """A real transport that keeps every request sent through it."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def test_v11_signatures_are_checked_not_just_present(fresh: OneRosterSimProcess) -> None:
    recording = _Recording()
    with OneRosterRestClient(fresh.settings("1.1"), transport=recording) as client:
        assert len(list(client.iter_collection("users"))) == 6
    (signed,) = recording.sent
    authorization = signed.headers["Authorization"]
    assert 'oauth_signature_method="HMAC-SHA256"' in authorization

    replayed = httpx.get(str(signed.url), headers={"Authorization": authorization})
    tampered = httpx.get(
        str(signed.url.copy_set_param("offset", "3")), headers={"Authorization": authorization}
    )
    assert (replayed.status_code, tampered.status_code) == (401, 401)
    assert "nonce" in replayed.json()["imsx_description"]


def test_token_about_to_expire_is_renewed_before_use(fresh: OneRosterSimProcess) -> None:
    answer = httpx.post(f"{fresh.base_url}/_sim/config", json={"token_ttl_s": 5})
    assert answer.status_code == 200
    # Within the client's expiry margin: each page gets a new token, none is refused.
    with OneRosterRestClient(fresh.settings("1.2", page_size=2)) as client:
        assert len(list(client.iter_collection("users"))) == 6
        assert client.tokens_fetched == 3
    assert [p["status"] for p in fresh.requests(USERS_PATH["1.2"])] == [200, 200, 200]
