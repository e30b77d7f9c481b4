"""The notify store on each supported database (SQLite file and PostgreSQL): acknowledgements
claimed once, escalation moves once per level, statuses never go back, incident marks only move
forward, the outbox keeps what the broker has not confirmed, a held family message is decided
once and superseded by a newer one; and the pure parts (audiences, templates, ack tokens) that
the service builds on.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import SecretStr

from safehub.kernel.codec import Codec
from safehub.kernel.directory import Building, School
from safehub.kernel.errors import ConfigError
from safehub.kernel.live_directory import LiveDirectory, change_event
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from services.notify import dispatcher, templates
from services.notify.audiences import AudienceError, Audiences
from services.notify.dispatcher import TokenBucket
from services.notify.settings import RateLimit
from services.notify.store import (
    RANK,
    DeliveryRow,
    HeldRow,
    NotificationRow,
    OutboxItem,
    RecipientRow,
    StatusChange,
    Store,
)
from services.notify.web import AckLinks
from tests.support.notify import directory, people


def _notification(**changes: object) -> NotificationRow:
    values: dict[str, object] = {
        "notification_id": f"n-{uuid.uuid4().hex[:10]}",
        "request_event_id": "ev-1",
        "incident_id": f"inc-{uuid.uuid4().hex[:8]}",
        "tenant": {"state": "TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"},
        "school_id": "sch-lincoln-hs",
        "building": None,
        "srp_action": "LOCKDOWN",
        "priority": "LIFE_SAFETY",
        "exercise": False,
        "require_ack": True,
        "headline": "LOCKDOWN",
        "body": "Locks, lights, out of sight.",
        "audiences": ["staff:sch-lincoln-hs"],
        "cap_identifier": None,
        "created_at": time.time(),
    }
    return NotificationRow(**{**values, **changes})  # type: ignore[arg-type]


def _delivery(n: NotificationRow, recipient: str, channel: str, attempt: int = 1) -> DeliveryRow:
    now = time.time()
    return DeliveryRow(
        f"{n.notification_id}:{recipient}:{channel}:{attempt}",
        n.notification_id,
        recipient,
        channel,
        attempt,
        "QUEUED",
        None,
        None,
        "initial",
        now,
        now,
    )


@pytest.fixture
def store(database_url: str) -> Store:
    return Store(database_url, table_prefix=f"t{uuid.uuid4().hex[:6]}_")


def _create(store: Store, due: float | None = None) -> tuple[NotificationRow, DeliveryRow]:
    n = _notification()
    recipient = RecipientRow(
        n.notification_id, "stf-1", "staff", ["SMS", "EMAIL"], None, None, 0, due
    )
    delivery = _delivery(n, "stf-1", "SMS")
    assert store.create_notification(n, [recipient], [delivery], [OutboxItem("e-1", b"x")])
    return n, delivery


def test_a_notification_is_created_once(store: Store) -> None:
    n, delivery = _create(store)
    again = RecipientRow(n.notification_id, "stf-2", "staff", [], None, None, 0, None)
    assert not store.create_notification(n, [again], [], [])
    assert [r.recipient_id for r in store.recipients_of(n.notification_id)] == ["stf-1"]
    assert store.delivery(delivery.delivery_id) == delivery
    assert store.queued() == [delivery]


def test_acknowledgement_is_claimed_once_even_concurrently(store: Store) -> None:
    n, _ = _create(store)
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: store.claim_ack(
                    n.notification_id,
                    "stf-1",
                    channel="EMAIL",
                    response="ACKNOWLEDGED",
                    outbox=[OutboxItem(f"ack-{i}", b"a")],
                ),
                range(8),
            )
        )
    assert results.count(True) == 1
    [recipient] = store.recipients_of(n.notification_id)
    assert recipient.acked_at is not None and recipient.next_escalation_at is None
    assert store.open_acks_for(["stf-1"]) == []
    assert store.acked_since(["stf-1"], time.time() - 60)
    # Only the winner's event is in the outbox (with the creation's).
    assert len(store.outbox_pending()) == 2


def test_escalation_moves_once_per_level_and_stops_when_acknowledged(store: Store) -> None:
    n, _ = _create(store, due=time.time() - 1)
    [due] = store.due_escalations(time.time())
    voice = _delivery(n, "stf-1", "VOICE")
    assert store.escalate(
        n.notification_id, "stf-1", level=1, next_at=time.time() - 1, deliveries=[voice], outbox=[]
    )
    assert not store.escalate(
        n.notification_id, "stf-1", level=1, next_at=None, deliveries=[], outbox=[]
    )  # a second worker loses
    assert due.escalation_level == 0
    assert [d.channel for d in store.deliveries_of(n.notification_id)] == ["SMS", "VOICE"]
    store.claim_ack(n.notification_id, "stf-1", channel="SMS", response="ACKNOWLEDGED", outbox=[])
    assert store.due_escalations(time.time()) == []
    assert not store.escalate(
        n.notification_id, "stf-1", level=2, next_at=None, deliveries=[], outbox=[]
    )


def test_statuses_never_go_back_and_keep_the_provider_id(store: Store) -> None:
    _n, delivery = _create(store)
    d = delivery.delivery_id
    store.record_statuses([StatusChange(d, "SENT", "SM1")], [])
    store.record_statuses([StatusChange(d, "DELIVERED", None)], [])
    store.record_statuses([StatusChange(d, "SENT", None)], [])  # a late, older callback
    row = store.delivery(d)
    assert row is not None and row.status == "DELIVERED" and row.provider_message_id == "SM1"
    assert store.delivery_by_provider_id("SM1") == row


def test_delivered_is_never_overwritten_by_a_later_failure_and_overwrites_an_earlier_one(
    store: Store,
) -> None:
    n, delivery = _create(store)
    other = _delivery(n, "stf-1", "EMAIL")
    store.add_deliveries([other], [])
    d, e = delivery.delivery_id, other.delivery_id
    store.record_statuses([StatusChange(d, "DELIVERED", "SM1")], [])
    store.record_statuses([StatusChange(d, "FAILED", None, "30003")], [])  # a late bounce
    store.record_statuses([StatusChange(e, "FAILED", None, "550")], [])
    store.record_statuses([StatusChange(e, "EXPIRED", None, "late")], [])  # failures rank alike
    store.record_statuses([StatusChange(e, "DELIVERED", "M1")], [])  # a late carrier receipt
    rows = {r.delivery_id: r for r in store.deliveries_of(n.notification_id)}
    assert (rows[d].status, rows[d].error) == ("DELIVERED", None)
    assert (rows[e].status, rows[e].provider_message_id) == ("DELIVERED", "M1")


def test_the_one_status_order_never_lets_a_receipt_go_back() -> None:
    # The intended order, lowest first: a status only ever moves to a later level. DELIVERED
    # is final success: a later FAILED (a bounce, a provider retry) never overwrites it, while
    # a DELIVERED after a FAILED (a late carrier receipt) does. The failures rank alike.
    intended = [{"QUEUED"}, {"SENT"}, {"FAILED", "REJECTED", "EXPIRED"}, {"DELIVERED"}]
    assert vars(dispatcher)["RANK"] is RANK  # defined once: the dispatcher checks the store's order
    assert set(RANK) == set().union(*intended)
    for level, statuses in enumerate(intended):
        assert len({RANK[s] for s in statuses}) == 1, statuses
        for later in intended[level + 1 :]:
            assert all(RANK[s] < RANK[t] for s in statuses for t in later), (statuses, later)
    assert RANK["DELIVERED"] > RANK["FAILED"]


def test_incident_marks_only_move_forward(store: Store) -> None:
    store.mark_incident("inc-1", "LOCKDOWN", 2, "n-2", ["staff:s"])
    store.mark_incident("inc-1", "SECURE", 1, "n-1", ["staff:s"])  # older: ignored
    assert store.incident_mark("inc-1") == ("LOCKDOWN", 2, "n-2", ["staff:s"])
    store.mark_incident("inc-1", "ALL_CLEAR", 3, "n-3", ["staff:s"])
    assert store.incident_mark("inc-1") == ("ALL_CLEAR", 3, "n-3", ["staff:s"])


def test_outbox_keeps_events_until_confirmed(store: Store) -> None:
    _create(store)
    assert [i.event_id for i in store.outbox_pending()] == ["e-1"]
    assert store.outbox_pending(older_than_s=3600) == []
    store.outbox_done(["e-1"])
    assert store.outbox_pending() == []


def test_cap_documents_are_kept_per_incident(store: Store) -> None:
    n, _ = _create(store)
    store.put_cap(
        "cap-1",
        notification_id=n.notification_id,
        school_id=n.school_id,
        msg_type="Alert",
        scope="Restricted",
        headline="h",
        xml="<alert/>",
        sent_at=n.created_at,
    )
    assert store.cap("cap-1") == ("<alert/>", "Restricted")
    assert n.incident_id is not None
    assert store.cap_of_incident(n.incident_id, "Restricted") == [("cap-1", n.created_at)]
    assert store.cap_of_incident(n.incident_id, "Public") == []  # a separate thread
    assert store.cap_unposted() == [("cap-1", "<alert/>")]
    store.cap_posted("cap-1")
    assert store.cap_unposted() == []


def _held(incident_id: str, action: str = "LOCKDOWN") -> HeldRow:
    return HeldRow(
        notification_id=f"h-{uuid.uuid4().hex[:10]}",
        incident_id=incident_id,
        tenant={"state": "TX", "district": "dist-north-isd", "school": "sch-lincoln-hs"},
        school_id="sch-lincoln-hs",
        srp_action=action,
        priority="URGENT",
        headline="Lockdown at Lincoln",
        body="Please do not come to the school.",
        audiences=["guardians:sch-lincoln-hs"],
        causation_id="ev-incident",
        created_at=time.time(),
    )


def test_a_held_message_is_decided_once_even_concurrently(store: Store) -> None:
    held = _held("inc-h1")
    assert store.hold(held) and not store.hold(held)  # a redelivered incident: no change
    assert [h.notification_id for h in store.held_messages("sch-lincoln-hs")] == [
        held.notification_id
    ]

    def decide(i: int) -> bool:
        return store.decide(
            held.notification_id,
            status="approved" if i % 2 else "rejected",
            decided_by=f"stf-{i}",
            decision_event_id=f"dec-{i}",
            note=None,
            released_headline="h" if i % 2 else None,
            released_body="b" if i % 2 else None,
            outbox=[OutboxItem(f"release-{i}", b"r")] if i % 2 else [],
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(decide, range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    decided = store.held_message(held.notification_id)
    assert decided is not None and decided.decided_by == f"stf-{winner}"
    assert decided.status == ("approved" if winner % 2 else "rejected")
    assert decided.decided_at is not None and decided.decision_event_id == f"dec-{winner}"
    # Only the winner's release (if it approved) is in the outbox.
    assert [i.event_id for i in store.outbox_pending()] == (
        [f"release-{winner}"] if winner % 2 else []
    )
    assert store.held_messages("sch-lincoln-hs") == []
    assert [h.status for h in store.held_messages("sch-lincoln-hs", None)] == [decided.status]


def test_a_newer_held_message_supersedes_the_undecided_one_of_its_incident(store: Store) -> None:
    lockdown, other = _held("inc-h2"), _held("inc-h3")
    store.hold(lockdown)
    store.hold(other)
    clear = _held("inc-h2", "ALL_CLEAR")
    store.hold(clear)
    statuses = {h.notification_id: h.status for h in store.held_messages("sch-lincoln-hs", None)}
    assert statuses == {
        lockdown.notification_id: "superseded",
        other.notification_id: "held",  # another incident: untouched
        clear.notification_id: "held",
    }
    assert not store.decide(
        lockdown.notification_id,
        status="approved",
        decided_by="stf-1",
        decision_event_id="d",
        note=None,
        released_headline=None,
        released_body=None,
        outbox=[],
    )


def test_a_wrong_database_url_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        Store("mysql://localhost/x")


# -- pure parts --------------------------------------------------------------------------------


def test_audiences_resolve_by_role_building_student_and_refuse_unknowns() -> None:
    audiences = Audiences(directory(), people())
    lincoln = people().school("sch-lincoln-hs")
    nurses = audiences.resolve(["staff:sch-lincoln-hs:role=nurse"])
    assert {t.recipient_id for t in nurses} == {m.id for m in lincoln.staff if m.role == "nurse"}
    in_a = audiences.resolve(["staff:sch-lincoln-hs:building=A"])
    assert {t.recipient_id for t in in_a} == {
        m.id for m in lincoln.staff if not m.buildings or "A" in m.buildings
    }
    guardian = lincoln.guardians[0]
    by_student = audiences.resolve([f"guardians:student={guardian.student_ids[0]}"])
    assert guardian.id in {t.recipient_id for t in by_student}
    [pa] = audiences.resolve(["pa:sch-lincoln-hs"])
    assert pa.endpoint_channel == "PUBLIC_ADDRESS" and pa.addresses() == {
        "PUBLIC_ADDRESS": "pa:sch-lincoln-hs"
    }
    for bad, reason in [
        ("staff:sch-lincoln-hs:building=Z", "no building 'Z'"),
        ("guardians:student=stu-none", "no guardian"),
        ("staff", "is not <kind>:<school>"),
    ]:
        with pytest.raises(AudienceError, match=reason):
            audiences.resolve([bad])
    with pytest.raises(AudienceError, match="no audience and no recipient"):
        audiences.resolve([])


def test_audiences_read_the_directory_as_it_is_at_each_resolution() -> None:
    """With the live directory, a school added at run time is addressable by the next request
    and one removed is not; a building a school gains can be targeted."""
    seed = directory()
    live = LiveDirectory(seed, KafkaSettings(), TopicCatalog(), Codec.from_contracts())
    audiences = Audiences(live, people())
    new_school = School(id="sch-notify-new", name="New Elementary", psap_id="psap-north-county")
    with pytest.raises(AudienceError, match="unknown school 'sch-notify-new'"):
        audiences.resolve(["pa:sch-notify-new"])
    north = seed.district_of("sch-lincoln-hs").id
    live.apply(
        [change_event(seed, "SCHOOL", new_school, version=1, changed_by="t", district_id=north)]
    )
    [pa] = audiences.resolve(["pa:sch-notify-new"], district=north)
    assert pa.school_id == "sch-notify-new"
    lincoln = seed.school("sch-lincoln-hs")
    annex = lincoln.model_copy(update={"buildings": [*lincoln.buildings, Building(id="Z")]})
    live.apply([change_event(seed, "SCHOOL", annex, version=1, changed_by="t", district_id=north)])
    assert audiences.resolve(["staff:sch-lincoln-hs:building=Z"])  # staff of every building
    live.apply(
        [
            change_event(
                seed,
                "SCHOOL",
                new_school,
                version=2,
                changed_by="t",
                district_id=north,
                change="DELETED",
            )
        ]
    )
    with pytest.raises(AudienceError, match="unknown school 'sch-notify-new'"):
        audiences.resolve(["pa:sch-notify-new"])


def test_templates_speak_the_recipients_language_and_mark_drills() -> None:
    spanish = templates.render(
        srp_action="LOCKDOWN",
        headline="",
        body="",
        school_name="Lincoln",
        language="es-US",
        channel="EMAIL",
        exercise=True,
        ack_url="https://x/ack/t",
        require_ack=True,
    )
    assert (
        spanish.subject.startswith("SIMULACRO / DRILL") and "CIERRE DE EMERGENCIA" in spanish.text
    )
    assert "https://x/ack/t" in spanish.text
    sms = templates.render(
        srp_action="ALL_CLEAR",
        headline="",
        body="",
        school_name="Lincoln",
        language="en-US",
        channel="SMS",
        exercise=False,
        ack_url=None,
        require_ack=True,
    )
    assert "ALL CLEAR" in sms.subject and "Reply 1" in sms.text and "DRILL" not in sms.text


def test_ack_tokens_are_signed_and_a_secret_is_required() -> None:
    links = AckLinks(SecretStr("k1"), "https://hub.example")
    token = links.token("d-1")
    assert links.verify(token) == "d-1"
    assert links.url("d-1") == f"https://hub.example/ack/{token}"
    assert links.verify("d-2." + token.split(".")[1]) is None
    assert AckLinks(SecretStr("k2")).verify(token) is None
    with pytest.raises(ConfigError, match="ACK_SECRET"):
        AckLinks(SecretStr(""))


def test_token_bucket_allows_the_burst_then_waits() -> None:
    bucket = TokenBucket(RateLimit(rate_per_s=1000, burst=5))
    stop = threading.Event()
    assert all(bucket.acquire(stop) for _ in range(5))
    slow = TokenBucket(RateLimit(rate_per_s=0.001, burst=1))
    stop.set()
    assert slow.acquire(stop)  # the burst
    assert not slow.acquire(stop)  # would wait ~1000 s; a stopping service is told at once


def test_families_get_their_own_calm_text_in_their_language() -> None:
    school = "Lincoln High School"
    stay_away = {"en-US": "do not come to the school", "es-US": "no venga a la escuela"}
    for action in templates.ACTIONS:
        for language, words in stay_away.items():
            text = templates.family(action, school, language)
            assert text is not None and school in text.headline
            staff_instruction = templates.ACTIONS[action][templates.primary(language)][1]
            assert staff_instruction not in text.text
            # While the action lasts, families are asked to stay away.
            assert (words in text.instruction) is (action != "ALL_CLEAR"), (action, language)
    prepared = templates.family("LOCKDOWN", school, "en")
    assert prepared is not None
    assert "do not come to the school" in prepared.instruction
    assert "pick up your child" in prepared.instruction

    def to_guardian(language: str, headline: str, body: str) -> templates.Rendered:
        return templates.render(
            srp_action="LOCKDOWN",
            headline=headline,
            body=body,
            school_name=school,
            language=language,
            channel="SMS",
            exercise=False,
            ack_url=None,
            require_ack=False,
            for_family=True,
        )

    spanish = to_guardian("es-US", prepared.headline, prepared.text)
    assert spanish.subject == f"Cierre de emergencia en {school}"
    assert "Por favor, no venga a la escuela" in spanish.text and "Locks" not in spanish.text
    assert to_guardian("en-US", prepared.headline, prepared.text).text == prepared.text
    # Edited by the approver: sent as written, in every language.
    edited = to_guardian("es-US", "Lockdown: update", "Reunification at the stadium at 3 pm.")
    assert (edited.subject, edited.text) == (
        "Lockdown: update",
        "Reunification at the stadium at 3 pm.",
    )
    assert templates.family_as_prepared("LOCKDOWN", school, prepared.headline, prepared.text)
    assert not templates.family_as_prepared("LOCKDOWN", school, prepared.headline, "x")
    assert not templates.family_as_prepared(None, school, "h", "b")
