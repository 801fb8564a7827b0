"""The connection's side of `captioner serve`: the Host allow-list, cross-origin refusals, security headers,
and uvicorn's protocol with the idle deadline and the connection cap."""

from __future__ import annotations

import asyncio
import json

try:
    from starlette.responses import JSONResponse
except ImportError:  # the optional extra: pip install 'captioner[serve]'
    JSONResponse = None

from captioner.serve.batching import ServeOptions

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(host: str, port: int, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Host headers a server listening on host:port answers: for a loopback address, the loopback names
    (localhost, 127.0.0.1, [::1]) with the port; for another address, that address; for every address (0.0.0.0,
    ::), any name ("*"), unless names are given, which it then answers with the loopback names. Each name of
    `extra` (--allow-host) is added, with the port unless it names one."""
    named = tuple(name if _split_host(name)[1] else f"{name}:{port}" for name in extra)
    if host in ("localhost", "127.0.0.1", "::1"):
        return (*named, *(f"{name}:{port}" for name in LOOPBACK))
    if host in ("0.0.0.0", "::", ""):
        return (*named, *(f"{name}:{port}" for name in LOOPBACK)) if named else ("*",)
    address = f"[{host}]" if ":" in host else host
    return (f"{address}:{port}", *named)


def _split_host(value: str) -> tuple[str, str]:
    """A Host header's name and port ("" when it names none), lower case."""
    value = value.strip().lower()
    if value.endswith("]") or ":" not in value:
        return value, ""
    name, _, port = value.rpartition(":")
    return name, port


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


# Every answer: the page's content policy, which also forbids framing (possible in a header only); the type as
# declared; no Referer sent on from the page.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class _Guard:
    """The ASGI middleware around every route: the Host allow-list, the refusal of cross-origin posts, and the
    security headers on every answer."""

    def __init__(self, app, options: ServeOptions):
        from captioner.report import SERVE_POLICY

        self.app = app
        hosts = options.allowed_hosts or LOOPBACK
        self.any_host = "*" in hosts
        self.hosts = {_split_host(host) for host in hosts}
        headers = {"content-security-policy": SERVE_POLICY + "; frame-ancestors 'none'", **SECURITY_HEADERS}
        self.headers = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, secured)
            return
        await self.app(scope, receive, secured)

    def refusal(self, scope) -> JSONResponse | None:
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "")
        if not self.any_host and not self.host_allowed(host):
            shown = host.replace("\n", " ")[:200] or "(none)"
            return _error(400, f"Host {shown} is not this server's (captioner serve --allow-host NAME adds one)")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin, site = headers.get("origin"), headers.get("sec-fetch-site")
            own = {f"http://{host}".lower(), f"https://{host}".lower()}
            if origin is not None and origin.strip().lower() not in own:
                return _error(403, f"a request from {origin.strip()[:200]}, another site, is refused")
            if site is not None and site.strip().lower() not in ("same-origin", "none"):
                return _error(403, f"a request from another site (Sec-Fetch-Site: {site.strip()[:40]}) is refused")
        return None

    def host_allowed(self, host: str) -> bool:
        name, port = _split_host(host)
        if not name:
            return False
        return (name, "") in self.hosts or (name, port or "80") in self.hosts


def server_config(app, host: str, port: int):
    """uvicorn's settings for an app of create_app: its HTTP/1.1 protocol with the idle timeout and the
    connection cap of the app's options, answering in JSON when the bytes are not HTTP."""
    import uvicorn

    options: ServeOptions = app.state.options
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=_protocol(options),
        timeout_keep_alive=options.idle_timeout,
    )


def _protocol(options: ServeOptions) -> type:
    """uvicorn's h11 protocol, holding each connection to a deadline: a request's headers must have arrived
    idle_timeout seconds after the connection opened or after its last answer (a slow or silent client is
    closed; uvicorn's own keep-alive timer restarts at every byte). A connection above max_connections is
    answered 503 and closed."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = _json(f"busy: {options.max_connections} connections are open; try again shortly")
    busy = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]

    async def too_many(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": busy})
        await send({"type": "http.response.body", "body": body})

    class Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > options.max_connections:
                self.app = too_many
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._settle()

        def on_response_complete(self) -> None:
            self._arm()
            super().on_response_complete()
            self._settle()  # a request sent before the answer (pipelined) may have begun

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            body = _json("not an HTTP/1.1 request")
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body)):
                self.transport.write(self.conn.send(event))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(options.idle_timeout, self._expire)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _settle(self) -> None:
            """A request whose headers arrived is the app's now (its upload has its own timeout)."""
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()

        def _expire(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return Protocol


def _json(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
