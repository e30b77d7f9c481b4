"""An aiohttp application served from its own thread and event loop.

Deployables run their consumers in threads; their HTTP endpoints (psap_cad's CAD callbacks,
notify's acknowledgement links and provider callbacks, the timeline's API and pages, the
simulators) are aiohttp applications. This serves one on a dedicated loop so the two worlds
do not share a thread. The socket is bound before :meth:`start` returns (port 0 picks a
free port; :meth:`bind` binds at once when the port must be known before the app is built),
and :meth:`close` stops accepting and gives requests in flight a grace period.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from safehub.kernel.errors import ConfigError, SafeHubError
from safehub.kernel.lifecycle import Closing, write_port_file
from safehub.kernel.settings import ListenSettings


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
    """Serves an aiohttp app where ``listen`` says (TLS optional) until :meth:`close`.

    Takes the same :class:`ListenSettings` as every server of the kernel; the bound port is
    written to ``listen.port_file`` once it is listening (servers on port 0).
    """

    def __init__(
        self,
        listen: ListenSettings,
        *,
        name: str,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self._listen = listen
        self._host = listen.host
        self._requested_port = listen.port
        self._ssl = ssl_context
        self._shutdown_timeout_s = shutdown_timeout_s
        self._name = name
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    def bind(self) -> int:
        """Bind the listening socket now (before the app exists); returns the port."""
        if self._socket is None:
            try:
                self._socket = socket.create_server((self._host, self._requested_port), backlog=512)
            except OSError as exc:
                raise ConfigError(
                    f"{self._name} cannot listen on {self._host}:{self._requested_port}: {exc}"
                ) from exc
            self.port = int(self._socket.getsockname()[1])
        return self.port

    def start(self, app: web.Application, timeout: float = 10.0) -> int:
        """Serve ``app``; returns the bound port once it is listening."""
        self.bind()
        self._thread = threading.Thread(
            target=self._serve, args=(app,), name=self._name, daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SafeHubError(f"{self._name} did not start in {timeout} s")
        if self._error is not None:
            raise SafeHubError(f"{self._name} could not serve: {self._error}") from self._error
        if self._listen.port_file is not None:
            write_port_file(self._listen.port_file, self.port)
        return self.port

    def _serve(self, app: web.Application) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        try:
            loop.run_until_complete(runner.setup())
            site = web.SockSite(runner, self._socket, ssl_context=self._ssl)  # type: ignore[arg-type]
            loop.run_until_complete(site.start())
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
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=self._shutdown_timeout_s + 5.0)
        if self._socket is not None:
            self._socket.close()


async def serve_until_signalled(
    app: web.Application,
    listen: ListenSettings,
    *,
    on_listening: Callable[[int], None] | None = None,
    shutdown_timeout_s: float = 2.0,
) -> None:
    """Serve ``app`` on this event loop until SIGTERM or SIGINT (a stand-in's whole life).

    The bound port goes to ``listen.port_file`` and to ``on_listening`` once it listens.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, listen.host, listen.port)
        await site.start()
        bound = int(runner.addresses[0][1])
        if listen.port_file is not None:
            write_port_file(listen.port_file, bound)
        if on_listening is not None:
            on_listening(bound)
        await stop.wait()
    finally:
        await runner.cleanup()
