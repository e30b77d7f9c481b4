"""Publishing CAP: an Atom index of public alerts, and POSTing a document to a CAP endpoint.

The feed follows what public CAP feeds do (NWS, the WMO Alert Hub): one Atom entry per
alert, its ``link rel="alternate" type="application/cap+xml"`` pointing at the CAP document,
plus a few ``cap:`` elements (event, status, msgType, urgency, severity, certainty, areaDesc)
so aggregators can filter without fetching each document. Only Public alerts may be listed:
staff (Restricted) alerts never reach a public index.

The sender does one POST; the caller decides about retries (:attr:`CapDeliveryError.transient`).
A retried document is the same CAP message (same sender, identifier, sent), which a CAP
receiver recognises, so no idempotency header is needed.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from lxml import etree  # type: ignore[import-untyped]
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from pydantic import SecretStr

from safehub.standards.cap import (
    CAP_MEDIA_TYPE,
    CAP_NAMESPACE,
    CapAlert,
    CapError,
    MsgType,
    Scope,
    Status,
    cap_datetime,
)
from services.notify.cap import LANGUAGE_EN

ATOM_NAMESPACE = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE = "application/atom+xml"


class CapDeliveryError(CapError):
    """A CAP endpoint did not take the document (status code only, never its body)."""

    def __init__(self, message: str, *, status_code: int | None, transient: bool) -> None:
        super().__init__(message)
        self.status_code = status_code  # None: no HTTP answer (connection, TLS, timeout)
        self.transient = transient  # worth retrying: no answer, 408, 429 or 5xx


@dataclass(frozen=True)
class FeedEntry:
    """One public alert in the feed."""

    cap_url: str  # where the CAP document is served; also the entry's id
    identifier: str
    sender: str
    sent: datetime
    status: Status
    msg_type: MsgType
    scope: Scope
    title: str
    summary: str | None = None
    author: str | None = None
    event: str | None = None
    urgency: str | None = None
    severity: str | None = None
    certainty: str | None = None
    area_desc: str | None = None

    @classmethod
    def for_alert(cls, alert: CapAlert, *, cap_url: str, language: str = LANGUAGE_EN) -> FeedEntry:
        """The entry for ``alert``, in ``language`` when it has that info (else its first)."""
        info = alert.info(language) or (alert.infos[0] if alert.infos else None)
        if info is None:  # e.g. a Cancel without info blocks
            return cls(
                cap_url,
                alert.identifier,
                alert.sender,
                alert.sent,
                alert.status,
                alert.msg_type,
                alert.scope,
                title=f"{alert.msg_type.value} {alert.identifier}",
            )
        return cls(
            cap_url,
            alert.identifier,
            alert.sender,
            alert.sent,
            alert.status,
            alert.msg_type,
            alert.scope,
            title=info.headline or info.event,
            summary=info.description,
            author=info.sender_name,
            event=info.event,
            urgency=info.urgency.value,
            severity=info.severity.value,
            certainty=info.certainty.value,
            area_desc="; ".join(a.description for a in info.areas) or None,
        )


def _atom(parent: Any, name: str, text: str | None = None, **attributes: str) -> Any:
    element = etree.SubElement(parent, f"{{{ATOM_NAMESPACE}}}{name}", attributes)
    if text is not None:
        element.text = text
    return element


def _cap(parent: Any, name: str, text: str | None) -> None:
    if text is not None:
        etree.SubElement(parent, f"{{{CAP_NAMESPACE}}}{name}").text = text


def atom_feed(
    entries: Sequence[FeedEntry],
    *,
    feed_url: str,
    title: str,
    updated: datetime,
    author: str = "SafeHub",
) -> bytes:
    """An Atom (RFC 4287) feed of ``entries``, newest first, each linking its CAP document.

    Raises :class:`CapError` if an entry is not a Public alert.
    """
    for entry in entries:
        if entry.scope is not Scope.PUBLIC:
            raise CapError(
                f"feed entry {entry.identifier[:64]!r}: scope {entry.scope.value} alerts are "
                "never listed in a public feed"
            )
    feed = etree.Element(
        f"{{{ATOM_NAMESPACE}}}feed", nsmap={None: ATOM_NAMESPACE, "cap": CAP_NAMESPACE}
    )
    _atom(feed, "id", feed_url)
    _atom(feed, "title", title)
    _atom(feed, "updated", cap_datetime(updated))
    _atom(_atom(feed, "author"), "name", author)
    _atom(feed, "link", rel="self", type=ATOM_MEDIA_TYPE, href=feed_url)
    for entry in sorted(entries, key=lambda e: e.sent, reverse=True):
        element = _atom(feed, "entry")
        _atom(element, "id", entry.cap_url)
        _atom(element, "title", entry.title)
        _atom(element, "updated", cap_datetime(entry.sent))
        _atom(element, "published", cap_datetime(entry.sent))
        if entry.author:
            _atom(_atom(element, "author"), "name", entry.author)
        if entry.summary:
            _atom(element, "summary", entry.summary)
        _atom(element, "link", rel="alternate", type=CAP_MEDIA_TYPE, href=entry.cap_url)
        _cap(element, "identifier", entry.identifier)
        _cap(element, "sender", entry.sender)
        _cap(element, "sent", cap_datetime(entry.sent))
        _cap(element, "event", entry.event)
        _cap(element, "status", entry.status.value)
        _cap(element, "msgType", entry.msg_type.value)
        _cap(element, "urgency", entry.urgency)
        _cap(element, "severity", entry.severity)
        _cap(element, "certainty", entry.certainty)
        _cap(element, "areaDesc", entry.area_desc)
    xml: bytes = etree.tostring(feed, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return xml


def post_cap(
    url: str,
    xml: bytes,
    *,
    timeout: float = 5.0,
    token: SecretStr | None = None,
    ca_bundle: Path | None = None,
) -> None:
    """POST one CAP document (``application/cap+xml``); any 2xx answer is delivery.

    ``token`` is sent as a bearer token; ``ca_bundle`` verifies the endpoint's certificate
    (default: the system's CAs). Raises :class:`CapDeliveryError` with the status code.
    """
    headers = {"Content-Type": CAP_MEDIA_TYPE}
    if token is not None:
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    try:
        verify = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        with httpx.Client(verify=verify, timeout=timeout, headers=headers) as client:
            HTTPXClientInstrumentor.instrument_client(client)
            response = client.post(url, content=xml)
    except httpx.HTTPError as exc:
        raise CapDeliveryError(
            f"CAP endpoint not reached: {type(exc).__name__}", status_code=None, transient=True
        ) from exc
    except OSError as exc:  # an unreadable or broken ca_bundle
        raise CapDeliveryError(
            f"CAP endpoint not reached: {type(exc).__name__}", status_code=None, transient=False
        ) from exc
    code = response.status_code
    if not 200 <= code < 300:
        raise CapDeliveryError(
            f"CAP endpoint answered HTTP {code}",
            status_code=code,
            transient=code >= 500 or code in (408, 429),
        )
