"""Sending EIDOs to CAD over HTTPS.

One POST per attempt to the PSAP's intake URL, with ``Idempotency-Key: <incident id>:<version>``
(so a re-send after a crash is the same request to CAD) and the W3C ``traceparent`` of the
current span (the httpx instrumentation adds a client span and the header). 200/201 is
delivery; anything else (connection failure, timeout, 5xx, even a 4xx) is a failed attempt
that the caller retries with backoff (:mod:`.dispatcher`): a real dispatch is never given up.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from connectors.psap_cad.settings import PsapCadConfig
from safehub.kernel.errors import StopWithoutCommit
from safehub.kernel.lifecycle import Closing

log = structlog.get_logger(__name__)

EIDO_MEDIA_TYPE = "application/json"


class DispatchInterrupted(StopWithoutCommit):
    """The connector is stopping while a dispatch is still undecided or unrecorded.

    A dispatch must never be dead-lettered: as a :class:`StopWithoutCommit` it passes
    through the kernel's consumer uncommitted, and the next run handles it again.
    """


@dataclass(frozen=True)
class CadAccepted:
    """CAD took the EIDO."""

    status_code: int
    cad_incident_id: str | None
    attempts: int


def client_ssl_context(config: PsapCadConfig) -> ssl.SSLContext:
    """TLS for calling CAD: its CA bundle (or the system's), our client certificate if set."""
    context = ssl.create_default_context(cafile=str(config.ca_bundle) if config.ca_bundle else None)
    if config.client_cert and config.client_key:
        context.load_cert_chain(str(config.client_cert), str(config.client_key))
    return context


class CadClient(Closing):
    """A keep-alive HTTPS client for the CAD intake endpoints."""

    def __init__(self, config: PsapCadConfig) -> None:
        self._config = config
        headers = {"Content-Type": EIDO_MEDIA_TYPE, "Accept": "application/json"}
        if config.cad_token is not None:
            headers["Authorization"] = f"Bearer {config.cad_token.get_secret_value()}"
        self._client = httpx.Client(
            verify=client_ssl_context(config),
            timeout=httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s),
            headers=headers,
        )
        HTTPXClientInstrumentor.instrument_client(self._client)

    def attempt(
        self, url: str, body: bytes, *, incident_id: str, version: int, attempt: int
    ) -> CadAccepted | str:
        """POST ``body`` once: what CAD accepted, or why it did not (no payload in it)."""
        key = f"{incident_id}:{version}"
        try:
            response = self._client.post(url, content=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code in (200, 201):
            return CadAccepted(response.status_code, _cad_id(response), attempt)
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            # CAD refuses the document: an operator must look, but we keep trying.
            log.error(
                "CAD rejected the EIDO",
                incident_id=incident_id,
                version=version,
                status_code=response.status_code,
                problems=_problems(response),
            )
        return f"HTTP {response.status_code}"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _cad_id(response: httpx.Response) -> str | None:
    try:
        data: Any = response.json()
    except ValueError:
        return None
    value = data.get("cadIncidentId") if isinstance(data, dict) else None
    return str(value) if value else None


def _problems(response: httpx.Response) -> list[str]:
    try:
        data: Any = response.json()
    except ValueError:
        return []
    problems = data.get("problems") if isinstance(data, dict) else None
    return [str(p)[:200] for p in problems[:20]] if isinstance(problems, list) else []
