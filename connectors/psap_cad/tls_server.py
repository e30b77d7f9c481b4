"""An aiohttp application served over TLS from its own thread and event loop.

The connector's consumers are threads; its inbound endpoint and the CAD simulator are
aiohttp applications. This runs one on a dedicated loop so the two worlds do not share a
thread, binds (port 0 picks a free port) before returning, and shuts down with a grace
period for requests in flight.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

from aiohttp import web

from safehub.kernel.errors import ConfigError, SafeHubError
from safehub.kernel.lifecycle import Closing


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS server context; with ``client_ca`` a client certificate is required (mTLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material for the server: {exc}") from exc
    return context


class ServerThread(Closing):
    """Serves ``app`` on ``host:port`` with TLS until :meth:`close`."""

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        name: str,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._ssl = ssl_context
        self._shutdown_timeout_s = shutdown_timeout_s
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    def start(self, timeout: float = 10.0) -> int:
        """Bind and start serving; returns the bound port."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SafeHubError(f"server {self._thread.name} did not start in {timeout} s")
        if self._error is not None:
            raise SafeHubError(
                f"server {self._thread.name} could not listen on "
                f"{self._host}:{self._requested_port}: {self._error}"
            ) from self._error
        return self.port

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            self._app, access_log=None, shutdown_timeout=self._shutdown_timeout_s
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(
                runner, self._host, self._requested_port, ssl_context=self._ssl, backlog=512
            )
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def close(self) -> None:
        """Stop accepting, let requests in flight finish (within the grace), stop the loop."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread.is_alive():
            self._thread.join(timeout=self._shutdown_timeout_s + 5.0)
