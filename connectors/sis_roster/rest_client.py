"""A client of a SIS's OneRoster rostering REST API (1.1 and 1.2).

- 1.1: every request is signed with OAuth 1.0a (RFC 5849, one-legged: consumer key and
  secret, no token), HMAC-SHA256 by default, HMAC-SHA1 for older providers; signatures come
  from ``authlib``.
- 1.2: OAuth 2 client credentials (RFC 6749 §4.4, HTTP Basic client authentication) for a
  bearer token, cached until shortly before it expires and fetched again once when the
  provider answers 401 (revoked, or a clock that disagrees).

:meth:`OneRosterRestClient.iter_collection` reads a collection page by page with ``limit`` and
``offset`` until ``X-Total-Count`` is reached (or a short page, for a provider without the
header), optionally only what changed since an instant (``filter=dateLastModified>'…'``).
Pages are retried with backoff on 429, 5xx and transport errors (``Retry-After`` honoured).
The reader's :attr:`CollectionReader.cursor` says where it got to; a caller that persists it
resumes there after a crash with ``resume=cursor``.

Errors are one :class:`OneRosterRestError`, naming the endpoint and the HTTP status and never
the response body (student data) or the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Self

import httpx
import structlog
from authlib.oauth1.rfc5849.client_auth import ClientAuth
from authlib.oauth1.rfc5849.signature import (
    generate_signature_base_string,
)
from authlib.oauth1.rfc5849.util import escape
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from safehub.kernel.errors import SafeHubError
from safehub.kernel.lifecycle import Closing

log = structlog.get_logger(__name__)

API_ROOTS = {"1.1": "/ims/oneroster/v1p1", "1.2": "/ims/oneroster/rostering/v1p2"}
SCOPE_CORE = "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly"
#: Collections of the rostering service, and the key each answer holds its list under.
COLLECTION_KEYS = {
    "orgs": "orgs", "schools": "orgs", "academicSessions": "academicSessions",
    "terms": "academicSessions", "gradingPeriods": "academicSessions", "classes": "classes",
    "courses": "courses", "users": "users", "students": "users", "teachers": "users",
    "enrollments": "enrollments", "demographics": "demographics",
}  # fmt: skip
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
#: A token is renewed this long before the provider says it expires (clock skew, latency).
TOKEN_EXPIRY_MARGIN_S = 30.0


class OneRosterRestError(SafeHubError):
    """A OneRoster request failed; names the endpoint and status, never data or credentials."""

    def __init__(
        self, endpoint: str, status: int | None, reason: str, code_minor: str | None = None
    ) -> None:
        status_text = f"HTTP {status}" if status is not None else "no answer"
        minor = f" ({code_minor})" if code_minor else ""
        super().__init__(f"OneRoster {endpoint}: {status_text}{minor}: {reason}")
        self.endpoint = endpoint
        self.status = status
        self.code_minor = code_minor


class OneRosterRestSettings(BaseModel):
    """Where the provider is and how to sign in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(description="the provider's root: scheme://host[/prefix]")
    version: Literal["1.1", "1.2"] = "1.2"
    client_id: SecretStr = Field(description="1.1 consumer key / 1.2 OAuth 2 client id")
    client_secret: SecretStr
    #: 1.2 token endpoint (default ``<base_url>/oauth/token``); providers put it elsewhere.
    token_url: str | None = None
    scope: str = SCOPE_CORE
    signature_method: Literal["HMAC-SHA256", "HMAC-SHA1"] = "HMAC-SHA256"
    page_size: int = Field(default=100, ge=1, le=10_000)
    timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    #: A longer Retry-After than this is cut down to it (a provider asking for hours).
    retry_after_max_s: float = Field(default=300.0, ge=0)
    #: Ask for ``sort=sourcedId``: offset paging and resuming need a stable order, and the
    #: binding promises none without a sort.
    sort_by_sourced_id: bool = True

    @field_validator("base_url", "token_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @property
    def api_root(self) -> str:
        """The rostering service's root URL for this version."""
        return self.base_url + API_ROOTS[self.version]

    @property
    def token_endpoint(self) -> str:
        """The OAuth 2 token URL."""
        return self.token_url or f"{self.base_url}/oauth/token"


@dataclass(frozen=True)
class Cursor:
    """Where a read of one collection got to: ``offset`` records were handed over."""

    collection: str
    offset: int
    since: datetime | None = None

    def to_json(self) -> str:
        """A form to persist."""
        since = None if self.since is None else self.since.isoformat()
        return json.dumps({"collection": self.collection, "offset": self.offset, "since": since})

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        """Back from :meth:`to_json` (ValueError if it is not one)."""
        raw = json.loads(text)
        offset = raw.get("offset") if isinstance(raw, dict) else None
        if not isinstance(offset, int) or offset < 0 or not raw.get("collection"):
            raise ValueError("not a OneRoster cursor")
        since = raw.get("since")
        return cls(
            collection=str(raw["collection"]),
            offset=offset,
            since=None if since is None else datetime.fromisoformat(since),
        )


def _sign_hmac_sha256(client: Any, request: Any) -> str:
    """RFC 5849 §3.4.2 with SHA-256, as OneRoster 1.1 requires (authlib ships only SHA-1)."""
    base_string = generate_signature_base_string(request)
    key = f"{escape(client.client_secret or '')}&{escape(client.token_secret or '')}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class _SigningClient(ClientAuth):  # type: ignore[misc]
    # Own copy: ClientAuth.register_signature_method would change every authlib user's table.
    SIGNATURE_METHODS = {**ClientAuth.SIGNATURE_METHODS, "HMAC-SHA256": _sign_hmac_sha256}


class _OAuth1(httpx.Auth):
    """Signs each request (a retry gets a fresh nonce and timestamp)."""

    def __init__(self, key: str, secret: str, method: str) -> None:
        self._signer = _SigningClient(key, secret, signature_method=method)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        _, headers, _ = self._signer.sign(request.method, str(request.url), {}, b"")
        request.headers["Authorization"] = headers["Authorization"]
        yield request


class CollectionReader(Iterator[dict[str, Any]]):
    """The records of one collection, fetched a page at a time; :attr:`cursor` after each."""

    def __init__(self, client: OneRosterRestClient, cursor: Cursor) -> None:
        self._client = client
        self._cursor = cursor
        self._page: deque[dict[str, Any]] = deque()
        self._fetched_to = cursor.offset  # offset just past the last page fetched
        self._done = False
        #: ``X-Total-Count`` of the last page (None until one came, or if the provider omits it).
        self.total: int | None = None
        self.pages = 0

    @property
    def cursor(self) -> Cursor:
        """Position after the last record handed over: persist it to resume there."""
        return self._cursor

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self._page:
            if self._done:
                raise StopIteration
            self._fetch()
            if not self._page:
                self._done = True
                raise StopIteration
        record = self._page.popleft()
        self._cursor = Cursor(self._cursor.collection, self._cursor.offset + 1, self._cursor.since)
        return record

    def _fetch(self) -> None:
        limit = self._client.settings.page_size
        offset = self._fetched_to
        if self.total is not None and offset >= self.total:
            self._done = True
            return
        records, total = self._client.fetch_page(
            self._cursor.collection, offset=offset, limit=limit, since=self._cursor.since
        )
        self.pages += 1
        self.total = total
        self._page = deque(records)
        self._fetched_to = offset + len(records)
        # Stop on a short page when there is no count; with a count, keep to it (a provider
        # may cap the page below our limit), but never loop on empty pages.
        short = total is None and len(records) < limit
        counted = total is not None and self._fetched_to >= total
        self._done = not records or short or counted


class OneRosterRestClient(Closing):
    """A session with one OneRoster provider; a context manager over an ``httpx.Client``."""

    def __init__(
        self,
        settings: OneRosterRestSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        auth: httpx.Auth | None = None
        if settings.version == "1.1":
            auth = _OAuth1(
                settings.client_id.get_secret_value(),
                settings.client_secret.get_secret_value(),
                settings.signature_method,
            )
        self._http = httpx.Client(
            timeout=settings.timeout_s,
            auth=auth,
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )
        self._token: str | None = None
        self._token_expires_at = 0.0
        self.tokens_fetched = 0

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._http.close()
        self._token = None

    # -- reading ---------------------------------------------------------------------------

    def iter_collection(
        self, name: str, *, since: datetime | None = None, resume: Cursor | None = None
    ) -> CollectionReader:
        """Every record of ``name`` (changed after ``since``), from ``resume``'s offset on."""
        if name not in COLLECTION_KEYS:
            raise ValueError(f"unknown OneRoster collection {name!r}")
        if resume is not None:
            if resume.collection != name:
                raise ValueError(f"cursor is for {resume.collection!r}, not {name!r}")
            if since is not None and since != resume.since:
                raise ValueError("since differs from the cursor's; resume with the cursor alone")
            return CollectionReader(self, resume)
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        return CollectionReader(self, Cursor(name, 0, since))

    def fetch_page(
        self, name: str, *, offset: int, limit: int, since: datetime | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page: its records and ``X-Total-Count`` (None if the provider omits it)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if since is not None:
            params["filter"] = f"dateLastModified>'{_instant(since)}'"
        if self.settings.sort_by_sourced_id:
            params["sort"] = "sourcedId"
            params["orderBy"] = "asc"
        endpoint = f"{API_ROOTS[self.settings.version]}/{name}"
        response = self._get(endpoint, params)
        try:
            body = response.json()
            records = body[COLLECTION_KEYS[name]]
        except (ValueError, KeyError, TypeError):
            raise OneRosterRestError(
                endpoint, response.status_code, f"answer has no {COLLECTION_KEYS[name]!r} list"
            ) from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise OneRosterRestError(endpoint, response.status_code, "answer is not a list")
        total_header = response.headers.get("X-Total-Count")
        total = int(total_header) if total_header and total_header.isdigit() else None
        return records, total

    # -- HTTP ------------------------------------------------------------------------------

    def _get(self, endpoint: str, params: dict[str, str | int]) -> httpx.Response:
        url = self.settings.base_url + endpoint
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            headers = self._bearer() if self.settings.version == "1.2" else {}
            try:
                response = self._http.get(url, params=params, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.settings.max_attempts:
                    raise OneRosterRestError(
                        endpoint, None, f"{type(exc).__name__} after {attempt} attempts"
                    ) from exc
                self._back_off(endpoint, attempt, None, type(exc).__name__)
                continue
            status = response.status_code
            if status == 200:
                return response
            if status == 401 and self.settings.version == "1.2" and not renewed:
                # The provider may revoke a token before its expiry: fetch a new one, once.
                renewed = True
                self._token = None
                log.info("OneRoster token refused; renewing", endpoint=endpoint)
                continue
            if status in RETRIED_STATUSES and attempt < self.settings.max_attempts:
                self._back_off(endpoint, attempt, response, str(status))
                continue
            raise OneRosterRestError(
                endpoint, status, _reason(status, attempt), _code_minor(response)
            )

    def _back_off(
        self, endpoint: str, attempt: int, response: httpx.Response | None, why: str
    ) -> None:
        delay = _retry_after(response, self.settings.retry_after_max_s)
        if delay is None:
            # Full jitter: clients that failed together do not retry together.
            ceiling = min(
                self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (attempt - 1)
            )
            delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        log.warning(
            "OneRoster request failed; retrying",
            endpoint=endpoint,
            why=why,
            attempt=attempt,
            delay_s=round(delay, 3),
        )
        self._sleep(delay)

    def _bearer(self) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._token_expires_at:
            self._fetch_token()
        return {"Authorization": f"Bearer {self._token}"}

    def _fetch_token(self) -> None:
        endpoint = httpx.URL(self.settings.token_endpoint).path or "/"
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.post(
                    self.settings.token_endpoint,
                    data={"grant_type": "client_credentials", "scope": self.settings.scope},
                    auth=(
                        self.settings.client_id.get_secret_value(),
                        self.settings.client_secret.get_secret_value(),
                    ),
                )
            except httpx.TransportError as exc:
                if attempt >= self.settings.max_attempts:
                    raise OneRosterRestError(
                        endpoint, None, f"{type(exc).__name__} after {attempt} attempts"
                    ) from exc
                self._back_off(endpoint, attempt, None, type(exc).__name__)
                continue
            status = response.status_code
            if status in RETRIED_STATUSES and attempt < self.settings.max_attempts:
                self._back_off(endpoint, attempt, response, str(status))
                continue
            if status != 200:
                # RFC 6749 §5.2's "error" is a fixed vocabulary; nothing else of the body is used.
                raise OneRosterRestError(
                    endpoint, status, _reason(status, attempt), _oauth_error(response)
                )
            break
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise OneRosterRestError(endpoint, status, "token answer is malformed") from None
        if (
            not isinstance(token, str)
            or not token
            or str(body.get("token_type")).lower() != ("bearer")
        ):
            raise OneRosterRestError(endpoint, status, "token answer has no bearer token")
        self._token = token
        self._token_expires_at = time.monotonic() + max(0.0, expires_in - TOKEN_EXPIRY_MARGIN_S)
        self.tokens_fetched += 1
        log.info("OneRoster token obtained", endpoint=endpoint, expires_in_s=expires_in)


def _instant(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, rounded down: a delta may repeat, never skip."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _reason(status: int, attempt: int) -> str:
    if status == 401:
        return "credentials refused"
    if status == 403:
        return "not permitted (scope)"
    if status in RETRIED_STATUSES:
        return f"still failing after {attempt} attempts"
    return "request refused"


def _code_minor(response: httpx.Response) -> str | None:
    """The imsx codeMinor token (a fixed vocabulary, so no student data), if any."""
    try:
        body = response.json()
        fields = body["imsx_CodeMinor"]["imsx_codeMinorField"]
        value = fields[0]["imsx_codeMinorFieldValue"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    return value if isinstance(value, str) and value.replace("_", "").isalpha() else None


def _oauth_error(response: httpx.Response) -> str | None:
    try:
        value = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value.replace("_", "").isalpha() else None


def _retry_after(response: httpx.Response | None, cap: float) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), at most ``cap``."""
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return min(cap, float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return min(cap, max(0.0, (when - datetime.now(UTC)).total_seconds()))
