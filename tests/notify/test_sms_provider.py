"""SMS and voice adapters against the Twilio-compatible provider simulator (a real process).

The simulator posts its signed webhooks to a real aiohttp receiver in the test; every
callback is checked with ``validate_signature`` and parsed with the parsers notify uses.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from safehub.kernel.errors import ConfigError
from safehub.standards.twilio import (
    INBOUND_PATH,
    SIGNATURE_HEADER,
    STATUS_PATH,
    VOICE_ACK_PATH,
    TwilioRequestError,
    parse_form,
    parse_gather,
    parse_inbound_sms,
    parse_status_callback,
    sign,
    twiml_reply,
    twiml_say,
    validate_signature,
)
from services.notify.channels.base import ChannelError, OutboundMessage
from services.notify.channels.sms import TwilioSmsAdapter, TwilioVoiceAdapter
from tests.support.sms import ProviderSimProcess, Received, WebhookReceiver
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture(scope="module")
def sim(
    tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Iterator[ProviderSimProcess]:
    workdir: Path = tmp_path_factory.mktemp("provider-sim")
    with ProviderSimProcess(workdir, inbound_url=receiver.base_url + INBOUND_PATH) as process:
        yield process


@pytest.fixture
def sms(sim: ProviderSimProcess, receiver: WebhookReceiver) -> Iterator[TwilioSmsAdapter]:
    adapter = TwilioSmsAdapter(sim.config(), status_callback_url=receiver.base_url + STATUS_PATH)
    yield adapter
    adapter.close()


@pytest.fixture
def voice(sim: ProviderSimProcess, receiver: WebhookReceiver) -> Iterator[TwilioVoiceAdapter]:
    adapter = TwilioVoiceAdapter(
        sim.config(),
        status_callback_url=receiver.base_url + STATUS_PATH,
        ack_action_url=receiver.base_url + VOICE_ACK_PATH,
    )
    yield adapter
    adapter.close()


def new_number() -> str:
    """A fresh E.164 number, so tests sharing the simulator never see each other's traffic."""
    return f"+1555{uuid.uuid4().int % 10**7:07d}"


def message(
    address: str,
    text: str = "LOCKDOWN at Lincoln HS. Reply 1 to acknowledge.",
    *,
    language: str = "en-US",
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=f"dlv-{uuid.uuid4().hex[:12]}",
        notification_id="ntf-1",
        recipient_id="staff-lincoln-001",
        address=address,
        subject="LOCKDOWN",
        text=text,
        language=language,
        ack_url=None,
        exercise=False,
    )


def callbacks_for(receiver: WebhookReceiver, sid: str, count: int) -> list[Received]:
    def arrived() -> list[Received]:
        hits = [
            r
            for r in receiver.at(STATUS_PATH)
            if sid in (r.form.get("MessageSid"), r.form.get("CallSid"))
        ]
        return hits if len(hits) >= count else []

    return wait_until(arrived, timeout=20, what=f"{count} status callbacks for {sid}")


def signed(sim: ProviderSimProcess, request: Received) -> bool:
    return validate_signature(
        sim.auth_token, request.url, request.form, request.headers.get(SIGNATURE_HEADER)
    )


# -- signing ----------------------------------------------------------------------------------


def test_signature_matches_twilios_documented_example() -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    assert sign("12345", url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert validate_signature("12345", url, params, "GvWf1cFY/Q7PnoempGyD5oXAezc=")
    # a proxy may add the default port: still Twilio's request
    assert validate_signature(
        "12345",
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        params,
        "GvWf1cFY/Q7PnoempGyD5oXAezc=",
    )
    assert not validate_signature(
        "12345", url, {**params, "Digits": "1"}, sign("12345", url, params)
    )
    assert not validate_signature("54321", url, params, sign("12345", url, params))
    assert not validate_signature("12345", url + "&x=1", params, sign("12345", url, params))
    assert not validate_signature("12345", url, params, None)


# -- SMS --------------------------------------------------------------------------------------


def test_sms_is_accepted_and_signed_callbacks_report_sent_then_delivered(
    sim: ProviderSimProcess,
    receiver: WebhookReceiver,
    sms: TwilioSmsAdapter,
    spans: InMemorySpanExporter,
) -> None:
    number = new_number()
    result = sms.send(message(number))

    [span] = [s for s in spans.get_finished_spans() if s.name == "POST"]
    attributes = repr(dict(span.attributes or {}))
    assert "Messages.json" in attributes and sim.account_sid in attributes
    assert number not in attributes and "LOCKDOWN" not in attributes

    assert result.accepted and result.error is None and not result.delivered
    assert result.provider_message_id is not None and result.provider_message_id.startswith("SM")
    sid = result.provider_message_id
    callbacks = callbacks_for(receiver, sid, 2)
    assert all(signed(sim, c) for c in callbacks)
    statuses = [parse_status_callback(c.form) for c in callbacks]
    assert [(s.status, s.provider_status) for s in statuses] == [
        ("SENT", "sent"),
        ("DELIVERED", "delivered"),
    ]
    assert {s.provider_message_id for s in statuses} == {sid}
    assert callbacks[0].form["AccountSid"] == sim.account_sid
    held = sim.message(sid)
    assert held is not None
    assert (held["to"], held["from"], held["status"]) == (number, "+15550009999", "delivered")
    assert held["body"].startswith("LOCKDOWN at Lincoln HS")


def test_concurrent_sends_share_the_adapter(
    sim: ProviderSimProcess, receiver: WebhookReceiver, sms: TwilioSmsAdapter
) -> None:
    numbers = [new_number() for _ in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda n: sms.send(message(n)), numbers))

    sids = [r.provider_message_id for r in results]
    assert all(r.accepted for r in results) and len(set(sids)) == len(numbers)
    for sid in sids:
        assert sid is not None
        callbacks = callbacks_for(receiver, sid, 2)
        assert parse_status_callback(callbacks[-1].form).status == "DELIVERED"
    assert {m["to"] for n in numbers for m in sim.messages(to=n)} == set(numbers)


def test_scripted_undelivered_number_reports_failed_with_the_error_code(
    sim: ProviderSimProcess, receiver: WebhookReceiver, sms: TwilioSmsAdapter
) -> None:
    number = new_number()
    sim.script(number, "undelivered", error_code=30003)

    result = sms.send(message(number))

    assert result.accepted and result.provider_message_id
    callbacks = callbacks_for(receiver, result.provider_message_id, 2)
    assert all(signed(sim, c) for c in callbacks)
    last = parse_status_callback(callbacks[-1].form)
    assert (last.status, last.provider_status) == ("FAILED", "undelivered")
    assert last.error == "30003 Unreachable destination handset"


def test_scripted_failed_number_fails_without_being_sent(
    sim: ProviderSimProcess, receiver: WebhookReceiver, sms: TwilioSmsAdapter
) -> None:
    number = new_number()
    sim.script(number, "failed", error_code=30006)

    result = sms.send(message(number))

    assert result.provider_message_id
    [only] = callbacks_for(receiver, result.provider_message_id, 1)
    status = parse_status_callback(only.form)
    assert (status.status, status.error) == ("FAILED", "30006 Landline or unreachable carrier")
    held = sim.message(result.provider_message_id)
    assert held is not None and [c["status"] for c in held["callbacks"]] == ["failed"]


def test_invalid_number_is_refused_with_21211_and_never_logged(
    sim: ProviderSimProcess, sms: TwilioSmsAdapter
) -> None:
    bad = "555-0100-77"
    with structlog.testing.capture_logs() as logs:
        result = sms.send(message(bad, text="secret body text"))

    assert not result.accepted and result.provider_message_id is None
    assert result.error == "21211 Invalid 'To' Phone Number"
    assert logs, "the refusal is logged"
    flat = repr(logs)
    assert bad not in flat and "secret body text" not in flat
    assert not sim.messages(to=bad)


def test_wrong_auth_token_is_refused_with_20003(
    sim: ProviderSimProcess, receiver: WebhookReceiver
) -> None:
    adapter = TwilioSmsAdapter(sim.config(auth_token="not-the-token"), status_callback_url=None)
    try:
        result = adapter.send(message(new_number()))
    finally:
        adapter.close()
    assert not result.accepted
    assert result.error == "20003 Authentication failed"


def test_empty_auth_token_is_a_config_error(sim: ProviderSimProcess) -> None:
    with pytest.raises(ConfigError, match="auth token"):
        TwilioSmsAdapter(sim.config(auth_token=""), status_callback_url=None)


def test_provider_unreachable_is_a_transient_channel_error(sim: ProviderSimProcess) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    adapter = TwilioSmsAdapter(
        sim.config(api_base_url=f"http://127.0.0.1:{closed_port}"), status_callback_url=None
    )
    try:
        with pytest.raises(ChannelError, match="unreachable"):
            adapter.send(message(new_number()))
    finally:
        adapter.close()


def test_provider_outage_and_rate_limit_are_transient_channel_errors(
    sim: ProviderSimProcess, sms: TwilioSmsAdapter
) -> None:
    sim.configure(down=True)
    try:
        with pytest.raises(ChannelError, match="503"):
            sms.send(message(new_number()))
    finally:
        sim.configure(down=False)
    sim.configure(max_requests_per_s=0.01)  # one request, then the next in 100 s
    try:
        assert sms.send(message(new_number())).accepted
        with pytest.raises(ChannelError, match="429"):
            sms.send(message(new_number()))
    finally:
        sim.configure(max_requests_per_s=None)
    assert sms.send(message(new_number())).accepted


def test_simulator_answers_twilio_errors_to_any_http_client(sim: ProviderSimProcess) -> None:
    url = f"{sim.base_url}/2010-04-01/Accounts/{sim.account_sid}/Messages.json"
    auth = (sim.account_sid, sim.auth_token)
    with httpx.Client() as client:
        missing_to = client.post(url, data={"From": "+15550009999", "Body": "x"}, auth=auth)
        as_json = client.post(url, json={"To": new_number(), "Body": "x"}, auth=auth)
        no_auth = client.post(url, data={"To": new_number(), "Body": "x"})
        other_account = client.post(
            url.replace(sim.account_sid, "AC" + "1" * 32),
            data={"To": new_number(), "From": "+15550009999", "Body": "x"},
            auth=auth,
        )
        no_twiml = client.post(
            url.replace("Messages", "Calls"),
            data={"To": new_number(), "From": "+15550009999"},
            auth=auth,
        )
    assert missing_to.status_code == 400
    assert missing_to.json() == {
        "code": 21604,
        "message": "A 'To' phone number is required.",
        "more_info": "https://www.twilio.com/docs/errors/21604",
        "status": 400,
    }
    assert as_json.json()["code"] == 21604  # Twilio takes form encoding only
    assert (no_auth.status_code, no_auth.json()["code"]) == (401, 20003)
    assert no_auth.headers["WWW-Authenticate"].startswith("Basic")
    assert (other_account.status_code, other_account.json()["code"]) == (404, 20404)
    assert (no_twiml.status_code, no_twiml.json()["code"]) == (400, 21205)


# -- inbound replies --------------------------------------------------------------------------


def test_inbound_reply_1_arrives_signed_and_acknowledges(
    sim: ProviderSimProcess, receiver: WebhookReceiver, sms: TwilioSmsAdapter
) -> None:
    number = new_number()
    sent = sms.send(message(number))
    assert sent.accepted

    answer = sim.reply(number, " 1 ")

    assert answer["http_status"] == 200
    [inbound] = [r for r in receiver.at(INBOUND_PATH) if r.form.get("From") == number]
    assert signed(sim, inbound)
    reply = parse_inbound_sms(inbound.form)
    assert reply.acknowledges and reply.from_number == number
    assert reply.provider_message_id == answer["message_sid"] != sent.provider_message_id
    assert inbound.form["To"] == "+15550009999"  # our number, the one the alert came from
    assert not parse_inbound_sms({**inbound.form, "Body": "where?"}).acknowledges


def test_tampered_callback_fails_signature_validation(
    sim: ProviderSimProcess, receiver: WebhookReceiver, sms: TwilioSmsAdapter
) -> None:
    number = new_number()
    sim.script(number, "undelivered", error_code=30005)
    result = sms.send(message(number))
    assert result.provider_message_id
    callback = callbacks_for(receiver, result.provider_message_id, 2)[-1]
    assert signed(sim, callback)

    forged = {**callback.form, "MessageStatus": "delivered"}
    forged.pop("ErrorCode")
    signature = callback.headers[SIGNATURE_HEADER]
    assert not validate_signature(sim.auth_token, callback.url, forged, signature)
    assert not validate_signature("another-token", callback.url, callback.form, signature)
    assert not validate_signature(
        sim.auth_token, callback.url.replace(STATUS_PATH, INBOUND_PATH), callback.form, signature
    )


# -- voice ------------------------------------------------------------------------------------


def test_voice_call_gather_press_1_acknowledges_and_completes(
    sim: ProviderSimProcess, receiver: WebhookReceiver, voice: TwilioVoiceAdapter
) -> None:
    number = new_number()
    receiver.answers[VOICE_ACK_PATH] = twiml_reply("Gracias, confirmado.", "es-US")
    outbound = message(number, "Cierre de emergencia. Pulse 1 para confirmar.", language="es-US")

    result = voice.send(outbound)

    assert result.accepted and result.provider_message_id
    call_sid = result.provider_message_id
    assert call_sid.startswith("CA")
    call = wait_until(
        lambda: (c := sim.call(call_sid)) and c["awaiting_digits"] and c,
        timeout=20,
        what="the call waiting for keys",
    )
    assert call["status"] == "in-progress"
    assert call["said"][0] == {
        "text": "Cierre de emergencia. Pulse 1 para confirmar.",
        "language": "es-US",
        "voice": "Polly.Lupe",
    }

    pressed = sim.press(call_sid, "1")

    assert pressed["http_status"] == 200
    [action] = [r for r in receiver.at(VOICE_ACK_PATH) if r.form.get("CallSid") == call_sid]
    assert signed(sim, action)
    assert action.query == {"d": outbound.delivery_id}
    gather = parse_gather(action.form)
    assert gather.acknowledged and gather.provider_message_id == call_sid
    [completed] = callbacks_for(receiver, call_sid, 1)
    assert signed(sim, completed)
    status = parse_status_callback(completed.form)
    assert (status.status, status.provider_status, status.error) == (
        "DELIVERED",
        "completed",
        None,
    )
    held = sim.call(call_sid)
    assert held is not None and held["said"][-1]["text"] == "Gracias, confirmado."
    assert not parse_gather({**action.form, "Digits": "2"}).acknowledged


def test_call_with_url_fetches_signed_twiml_from_it(
    sim: ProviderSimProcess, receiver: WebhookReceiver
) -> None:
    """A call created with ``Url`` (as other Twilio clients do) fetches its TwiML there."""
    receiver.answers["/twiml"] = twiml_say("Shelter in place.", "en-US", receiver.base_url + "/g")
    number = new_number()
    with httpx.Client(auth=(sim.account_sid, sim.auth_token)) as client:
        created = client.post(
            f"{sim.base_url}/2010-04-01/Accounts/{sim.account_sid}/Calls.json",
            data={"To": number, "From": "+15550009999", "Url": receiver.base_url + "/twiml"},
        )
    assert created.status_code == 201
    call_sid = created.json()["sid"]
    assert created.json()["status"] == "queued"
    wait_until(
        lambda: (c := sim.call(call_sid)) and c["awaiting_digits"],
        timeout=20,
        what="the call waiting for keys",
    )
    [fetch] = [r for r in receiver.at("/twiml") if r.form.get("CallSid") == call_sid]
    assert signed(sim, fetch) and fetch.form["CallStatus"] == "in-progress"
    assert sim.press(call_sid, "9")["http_status"] == 200
    [action] = [r for r in receiver.at("/g") if r.form.get("CallSid") == call_sid]
    assert not parse_gather(action.form).acknowledged
    assert wait_until(
        lambda: (c := sim.call(call_sid)) and c["status"] == "completed",
        timeout=20,
        what="the call completed",
    )


def test_voice_no_answer_is_failed(
    sim: ProviderSimProcess, receiver: WebhookReceiver, voice: TwilioVoiceAdapter
) -> None:
    number = new_number()
    sim.script(number, "no-answer")

    result = voice.send(message(number))

    assert result.provider_message_id
    [callback] = callbacks_for(receiver, result.provider_message_id, 1)
    assert signed(sim, callback)
    status = parse_status_callback(callback.form)
    assert (status.status, status.provider_status, status.error) == (
        "FAILED",
        "no-answer",
        "call not answered",
    )
    assert not sim.calls(to=number)[0]["said"], "an unanswered call says nothing"


def test_voice_invalid_number_is_refused(voice: TwilioVoiceAdapter) -> None:
    result = voice.send(message("+0123"))
    assert (result.accepted, result.error) == (False, "21211 Invalid 'To' Phone Number")


# -- parsing ----------------------------------------------------------------------------------


def test_malformed_callbacks_are_refused_by_name() -> None:
    with pytest.raises(TwilioRequestError, match="MessageStatus 'exploded'"):
        parse_status_callback({"MessageSid": "SM1", "MessageStatus": "exploded"})
    with pytest.raises(TwilioRequestError, match="no MessageSid"):
        parse_status_callback({"MessageStatus": "sent"})
    with pytest.raises(TwilioRequestError, match="neither"):
        parse_status_callback({"Foo": "bar"})
    with pytest.raises(TwilioRequestError, match="no From"):
        parse_inbound_sms({"MessageSid": "SM1", "Body": "1"})
    with pytest.raises(TwilioRequestError, match="no CallSid"):
        parse_gather({"Digits": "1"})
    unknown = parse_status_callback(
        {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "39999"}
    )
    assert unknown.error == "39999 Twilio error"


def test_webhook_bodies_are_parsed_strictly_and_errors_never_carry_them() -> None:
    form = "application/x-www-form-urlencoded; charset=UTF-8"
    assert parse_form(b"From=%2B15551230001&Body=S%C3%AD+1&Digits=", form) == {
        "From": "+15551230001",
        "Body": "Sí 1",
        "Digits": "",
    }
    refused = {
        b"From=%2B15551230001&Body=1\xff": "not UTF-8",
        b"From=%2B15551230001&Body=%FF": "not UTF-8",
        b"From=%2B15551230001&Body": "not form data",
        b"&".join(b"a%d=1" % i for i in range(201)): "not form data",
        b"x=" + b"1" * (64 * 1024): "larger than",
    }
    for raw, reason in refused.items():
        with pytest.raises(TwilioRequestError, match=reason) as error:
            parse_form(raw, form)
        assert "1555" not in str(error.value) and error.value.__context__ is None
    with pytest.raises(TwilioRequestError, match="x-www-form-urlencoded"):
        parse_form(b'{"From": "+15551230001"}', "application/json")


def test_twiml_say_escapes_text_and_gathers_one_digit() -> None:
    document = twiml_say('Lockdown <now> & "stay"', "en-US", "https://hub/ack?d=a&b")
    assert "<now>" not in document
    assert 'Lockdown &lt;now&gt; &amp; "stay"' in document
    assert 'numDigits="1"' in document
    assert 'action="https://hub/ack?d=a&amp;b"' in document
    assert "<Gather" not in twiml_say("x", "en-US", None)
