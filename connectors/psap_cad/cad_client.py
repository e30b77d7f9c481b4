"""Sending EIDOs to CAD over HTTPS, retrying until CAD takes them or the connector stops.

One POST per incident version to the PSAP's intake URL, with ``Idempotency-Key:
<incident id>:<version>`` (so a re-send after a crash is the same request to CAD) and the
W3C ``traceparent`` of the current span (the httpx instrumentation adds a client span and
the header). 200/201 is delivery; anything else (connection failure, timeout, 5xx, even a
4xx) is retried with exponential backoff capped at ``retry_cap_s``: a real dispatch is never
given up. Only the stop signal ends the loop, with :class:`DispatchInterrupted`.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from connectors.psap_cad.settings import PsapCadConfig
from safehub.kernel.lifecycle import Closing

log = structlog.get_logger(__name__)

EIDO_MEDIA_TYPE = "application/json"


class DispatchInterrupted(BaseException):
    """The connector is stopping while a dispatch is still undelivered.

    A BaseException on purpose: the kernel's consumer retries and then dead-letters any
    Exception, and a dispatch must never be dead-lettered. This one passes through the
    consumer loop, so the offset is not committed and the next run sends it again.
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

    def __init__(self, config: PsapCadConfig, stop: threading.Event) -> None:
        self._config = config
        self._stop = stop
        headers = {"Content-Type": EIDO_MEDIA_TYPE, "Accept": "application/json"}
        if config.cad_token is not None:
            headers["Authorization"] = f"Bearer {config.cad_token.get_secret_value()}"
        self._client = httpx.Client(
            verify=client_ssl_context(config),
            timeout=httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s),
            headers=headers,
        )
        HTTPXClientInstrumentor.instrument_client(self._client)

    def deliver(self, url: str, body: bytes, *, incident_id: str, version: int) -> CadAccepted:
        """POST ``body`` until CAD accepts it; raises DispatchInterrupted only on stop."""
        key = f"{incident_id}:{version}"
        delay = self._config.retry_initial_s
        attempt = 0
        while True:
            attempt += 1
            reason: str
            try:
                response = self._client.post(url, content=body, headers={"Idempotency-Key": key})
                if response.status_code in (200, 201):
                    return CadAccepted(response.status_code, _cad_id(response), attempt)
                reason = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    # CAD refuses the document: an operator must look, but we keep trying.
                    log.error(
                        "CAD rejected the EIDO",
                        incident_id=incident_id,
                        version=version,
                        status_code=response.status_code,
                        problems=_problems(response),
                    )
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            log.warning(
                "CAD delivery failed, retrying",
                incident_id=incident_id,
                version=version,
                attempt=attempt,
                reason=reason,
                retry_in_s=round(delay, 3),
            )
            if self._stop.wait(delay):
                raise DispatchInterrupted(f"stopping with {key} undelivered")
            delay = min(delay * 2, self._config.retry_cap_s)

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
