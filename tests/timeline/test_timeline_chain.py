"""The hash chain (safehub.kernel.chain) and the store on SQLite and PostgreSQL, no broker."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from safehub.kernel import chain
from safehub.kernel.codec import Codec
from safehub.kernel.directory import Directory, default_directory_file
from safehub.kernel.envelope import EVENT_NAMESPACE
from services.timeline.ingest import draft_of
from services.timeline.query import ON_TOP, NotFoundError, Queries, dumps
from services.timeline.store import Store
from tests.support.timeline import RIVERSIDE, Scenario, fresh_database, referral


def _chain_of(n: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    prev = chain.GENESIS
    for seq in range(1, n + 1):
        payload = {"n": seq, "text": f"event {seq}"}
        entry: dict[str, Any] = {
            "seq": seq,
            "subject_id": "inc-1",
            "subject_kind": "incident",
            "event_id": f"e{seq}",
            "event_type": "IncidentChanged",
            "occurred_at": "2026-01-01T00:00:00.000000Z",
            "recorded_at": "2026-01-01T00:00:00.000000Z",
            "tenant": {"state": "US-TX", "district": "d", "school": "s"},
            "building": None,
            "room": None,
            "exercise": False,
            "source": "test",
            "actor": None,
            "lane": "incidents",
            "summary": "x",
            "classification": ["INTERNAL"],
            "trace_id": None,
            "span_id": None,
            "payload_sha256": chain.payload_digest(payload),
            "payload": payload,
            "prev_hash": prev,
        }
        entry["hash"] = chain.entry_hash(prev, entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def test_an_intact_chain_verifies() -> None:
    entries = _chain_of(6)
    result = chain.verify(entries, expected_count=6, expected_head=entries[-1]["hash"])
    assert result.ok and result.checked == 6 and result.problem is None


def test_altered_payload_and_field_are_named() -> None:
    entries = _chain_of(6)
    entries[2]["payload"]["text"] = "rewritten"
    problem = chain.verify(entries).problem
    assert problem is not None and (problem.seq, problem.kind) == (3, "altered")
    entries = _chain_of(6)
    entries[3]["summary"] = "nothing happened"
    problem = chain.verify(entries).problem
    assert problem is not None and (problem.seq, problem.kind) == (4, "altered")


def test_removed_entries_are_named_in_the_middle_and_at_the_end() -> None:
    entries = _chain_of(6)
    del entries[3]
    problem = chain.verify(entries).problem
    assert problem is not None and (problem.seq, problem.kind) == (4, "removed")
    # Renumbered after the removal: the link still gives it away.
    renumbered = copy.deepcopy(entries)
    for entry in renumbered[3:]:
        entry["seq"] -= 1
    problem = chain.verify(renumbered).problem
    assert problem is not None and (problem.seq, problem.kind) == (4, "removed")
    # The last one dropped: only the index's count and head reveal it.
    entries = _chain_of(6)
    head = entries[-1]["hash"]
    problem = chain.verify(entries[:-1], expected_count=6, expected_head=head).problem
    assert problem is not None and (problem.seq, problem.kind) == (6, "removed")


def test_swapped_entries_are_named_reordered() -> None:
    entries = _chain_of(6)
    entries[2]["seq"], entries[3]["seq"] = 4, 3
    problem = chain.verify(entries).problem
    assert problem is not None and (problem.seq, problem.kind) == (3, "reordered")


def test_canonical_json_is_stable() -> None:
    from datetime import UTC, datetime

    value = {"b": b"\x00\xff", "a": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "c": [1.5, "é"]}
    assert chain.canonical_json(value) == (
        '{"a":"2026-01-02T03:04:05.000006Z","b":"AP8=","c":[1.5,"é"]}'.encode()
    )


def _load(store: Store, codec: Codec, events: list[Any]) -> None:
    drafts = [draft_of(codec.decode(codec.encode(e)), []) for e in events]
    # In three batches, the first one twice: a redelivery after a crash is a no-op.
    store.apply(drafts[:4])
    store.apply(drafts[:4])
    store.apply(drafts[4:10])
    store.apply(drafts[10:])


def _answers(store: Store, scenarios: list[Scenario], case_id: str) -> dict[str, Any]:
    directory = Directory.load(default_directory_file())
    queries = Queries(store, directory)
    state = directory.reviewer("rev-state-auditor")
    north = directory.reviewer("rev-north-aar")
    assert state is not None and north is not None
    out: dict[str, Any] = {
        "list": queries.list_subjects(state, {"limit": "2"}),
        "list_page_2": queries.list_subjects(
            state,
            {"limit": "2", "cursor": queries.list_subjects(state, {"limit": "2"})["next_cursor"]},
        ),
        "north_list": queries.list_subjects(north, {}),
        "drills": queries.list_subjects(state, {"exercise": "true"}),
        "cleared": queries.list_subjects(state, {"status": "cleared", "kind": "incident"}),
        "case": queries.timeline(north, case_id, {}),
    }
    for scenario in scenarios:
        sid = scenario.incident_id
        out[sid] = {
            "timeline": queries.timeline(state, sid, {"limit": "4"}),
            "page_2": queries.timeline(state, sid, {"after_seq": "4", "limit": "4"}),
            "people": queries.people(state, sid),
            "verify": queries.verify(state, sid),
            "north": queries.timeline(north, sid, {})
            if scenario.tenant["district"] == "dist-north-isd"
            else None,
        }
    return out


def test_sqlite_and_postgresql_give_the_same_answers(codec: Codec, tmp_path: Path) -> None:
    """Same input, same answers: lists, pages, people, withheld fields, hashes."""
    real, drill, south = Scenario(), Scenario(exercise=True), Scenario(RIVERSIDE)
    case_id = "case-cmp-1"
    events = [*real.story(), *drill.story(), *south.story(), referral(case_id)]
    answers = []
    for url in (
        f"sqlite:///{tmp_path / 'cmp.sqlite3'}",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    ):
        with fresh_database(url) as fresh:
            store = Store(fresh)
            try:
                _load(store, codec, events)
                answers.append(json.loads(dumps(_answers(store, [real, drill, south], case_id))))
            finally:
                store.close()
    sqlite_answers, postgres_answers = answers
    assert sqlite_answers == postgres_answers
    # And the answers are the right ones, not merely equal.
    real_timeline = sqlite_answers[real.incident_id]["timeline"]
    assert real_timeline["chain"]["ok"] and real_timeline["subject"]["entry_count"] == 9
    assert [e["seq"] for e in real_timeline["entries"]] == [1, 2, 3, 4]
    assert real_timeline["entries"][0]["event_type"] == "PanicAlert"  # attached before its incident
    assert real_timeline["next_after_seq"] == 4
    assert [e["seq"] for e in sqlite_answers[real.incident_id]["page_2"]["entries"]] == [5, 6, 7, 8]
    assert {s["id"] for s in sqlite_answers["drills"]["items"]} == {drill.incident_id}
    assert south.incident_id not in {s["id"] for s in sqlite_answers["north_list"]["items"]}
    assert sqlite_answers[real.incident_id]["people"]["never_reached"] == ["stf-lincoln-002"]
    listed = sqlite_answers["list"]["items"] + sqlite_answers["list_page_2"]["items"]
    assert len({s["id"] for s in listed}) == 4
    withheld = sqlite_answers["case"]["entries"][0]
    assert withheld["data"]["student_id"] == {"withheld": "STUDENT_RECORD"}
    assert sorted(withheld["withheld"]) == ["reason", "student_id"]


def test_scope_and_clearance(codec: Codec, database_url: str) -> None:
    with fresh_database(database_url) as url:
        store = Store(url)
        try:
            scenario = Scenario()
            _load(store, codec, [*scenario.story(), referral("case-scope")])
            directory = Directory.load(default_directory_file())
            queries = Queries(store, directory)
            south = directory.reviewer("rev-south-aar")
            counsel = directory.reviewer("rev-north-counsel")
            assert south is not None and counsel is not None
            with pytest.raises(NotFoundError):
                queries.timeline(south, scenario.incident_id, {})
            with pytest.raises(NotFoundError):
                queries.timeline(south, "no-such-incident", {})
            assert queries.list_subjects(south, {})["items"] == []
            cleared = json.loads(dumps(queries.timeline(counsel, "case-scope", {})))["entries"][0]
            assert cleared["withheld"] == [] and cleared["data"]["student_id"] == "stu-98765"
        finally:
            store.close()


def _tamper(store: Store, sql: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_page_entries_are_the_whole_events_without_repeats(codec: Codec, database_url: str) -> None:
    """A page's ``data`` leaves out only envelope fields the entry carries top-level: the
    whole event (as exported, and as hashed) is rebuilt from the page alone."""
    with fresh_database(database_url) as url:
        store = Store(url)
        try:
            scenario = Scenario()
            _load(store, codec, scenario.story())
            directory = Directory.load(default_directory_file())
            queries = Queries(store, directory)
            state = directory.reviewer("rev-state-auditor")
            assert state is not None
            body = queries.timeline_json(state, scenario.incident_id, {})
            assert body == dumps(queries.timeline(state, scenario.incident_id, {}))
            page = json.loads(body)
            export = json.loads(
                dumps(queries.export(state, scenario.incident_id, pass_through=True))
            )
            assert len(page["entries"]) == len(export["entries"]) == 9
            for shown, whole in zip(page["entries"], export["entries"], strict=True):
                # The times the database formats are the chain's own text.
                assert shown["occurred_at"] == whole["occurred_at"]
                assert shown["recorded_at"] == whole["recorded_at"]
                envelope = shown["data"]["envelope"]
                assert not {"event_id", "event_type", "occurred_at", "source"} & set(envelope)
                assert envelope["tenant"] == whole["tenant"]
                rebuilt = {
                    **shown["data"],
                    "envelope": {
                        **{name: shown[name] for name in ON_TOP},
                        "event_type": EVENT_NAMESPACE + shown["event_type"],
                        **envelope,
                    },
                }
                assert rebuilt == whole["data"]
                assert chain.payload_digest(rebuilt) == shown["payload_sha256"]
                shown_rest = {k: v for k, v in shown.items() if k != "data"}
                assert shown_rest.items() <= whole.items()
        finally:
            store.close()


def test_pages_are_seq_ranges_and_the_chain_check_names_tampering(
    codec: Codec, database_url: str
) -> None:
    with fresh_database(database_url) as url:
        store = Store(url)
        try:
            scenario = Scenario()
            sid = scenario.incident_id
            _load(store, codec, scenario.story())
            directory = Directory.load(default_directory_file())
            queries = Queries(store, directory, chain_cache_s=0)
            state = directory.reviewer("rev-state-auditor")
            assert state is not None

            def walk() -> list[tuple[list[int], int | None]]:
                pages, after = [], 0
                while True:
                    page = queries.timeline(state, sid, {"after_seq": str(after), "limit": "4"})
                    pages.append(([e["seq"] for e in page["entries"]], page["next_after_seq"]))
                    if page["next_after_seq"] is None:
                        return pages
                    after = page["next_after_seq"]

            assert walk() == [([1, 2, 3, 4], 4), ([5, 6, 7, 8], 8), ([9], None)]
            checked = queries.timeline(state, sid, {})["chain"]
            assert checked["ok"] and checked["checked"] == 9
            # Later pages repeat the last check, even once the head has moved on (its
            # head_hash and count say what it covered); the first page checks the new head.
            late = {**scenario.story()[-1]}
            late["envelope"] = {**late["envelope"], "event_id": "late-1"}
            store.apply([draft_of(codec.decode(codec.encode(late)), [])])
            assert queries.timeline(state, sid, {"after_seq": "8"})["chain"] == checked
            assert queries.timeline(state, sid, {})["chain"]["checked"] == 10
            assert queries.timeline(state, sid, {"after_seq": "8"})["chain"]["checked"] == 10
            # The stored text re-spaced: not the hashed bytes, the same content: still intact.
            _tamper(
                store,
                "UPDATE entries SET payload = ' ' || payload WHERE subject_id = :s AND seq = 3",
                s=sid,
            )
            assert queries.verify(state, sid)["ok"]
            # Content changed: named, and the first page says so (cache 0 s) …
            _tamper(
                store,
                "UPDATE entries SET payload = replace(payload, :a, :b) "
                "WHERE subject_id = :s AND seq = 5",
                s=sid,
                a='"envelope":{',
                b='"x":1,"envelope":{',
            )
            problem = queries.timeline(state, sid, {})["chain"]["problem"]
            assert problem["seq"] == 5 and problem["kind"] == "altered"
            assert "payload" in problem["detail"]
            # … while later pages repeat the status of the first page of the same head.
            assert queries.timeline(state, sid, {"after_seq": "4"})["chain"]["problem"] == problem
            _tamper(
                store,
                "UPDATE entries SET payload = 'not json' WHERE subject_id = :s AND seq = 4",
                s=sid,
            )
            assert queries.verify(state, sid)["problem"]["seq"] == 4
            fourth = queries.timeline(state, sid, {"limit": "4"})["entries"][3]
            assert fourth["seq"] == 4 and set(fourth["data"].value()) == {"unreadable"}
            # A removed entry leaves a gap in its page, not a shifted page.
            _tamper(store, "DELETE FROM entries WHERE subject_id = :s AND seq = 2", s=sid)
            assert queries.verify(state, sid)["problem"] == {
                "seq": 2,
                "kind": "removed",
                "detail": "entry 2 is missing (seq jumps to 3)",
            }
            assert walk()[0] == ([1, 3, 4], 4)
        finally:
            store.close()
