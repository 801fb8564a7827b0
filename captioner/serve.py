"""`captioner serve`: a local web page and a JSON endpoint that caption pictures (Starlette on uvicorn).

    GET  /              the page: choose or drop a picture, see its caption with the attention viewer
    POST /api/caption   a picture (the request body, or the form field "image") -> the caption as JSON:
                        {image, caption, score, words, attention, grid_size, candidates?, top_class?, picture?}
                        (?picture=1 adds the picture as a JPEG data URL, as the page asks)
    GET  /api/health    {"status": "ok", "checkpoint" (its file name), "queued", "batches"}

Every other answer is {"error": "one line"} with its status (docs/web.md lists them).

Fit to leave running: one thread owns the model, and memory is bounded by the options, not by the clients.
A request is admitted before a byte of its upload is read, while fewer than queue_size + batch_size are in
the server (being read, decoded, waiting or captioned); the others are answered 503 at once. An upload is at
most max_upload bytes and must arrive within upload_timeout seconds; at most `decoders` pictures are decoded
at a time, holding at most decode_pixels decoded pixels together (the size is read from the file's header
first); a waiting picture is only its input tensor and a small copy. The connection (uvicorn's HTTP/1.1,
see server_config) closes when its request's headers have not arrived idle_timeout seconds after it opened
or after its last answer, and above max_connections a connection is answered 503 and closed.

Against other web pages: only the Host names of the address it listens on are answered (127.0.0.1: localhost,
127.0.0.1 and [::1] with the port; see allowed_hosts), so a name made to point at 127.0.0.1 (DNS rebinding)
is refused; a POST that a browser says comes from another origin is refused; every answer carries a content
security policy that forbids framing, nosniff and no-referrer; no answer names a path of this machine. The
server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from captioner.data.images import _open_unlimited, image_from_bytes
from captioner.errors import ConfigError, ImageLoadError
from captioner.pipeline import CaptionModel, ImageCaption, Prepared

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route
except ImportError:  # the optional extra: pip install 'captioner[serve]'
    Starlette = None

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
PILLOW_BLOCK = 64 * 1024 * 1024  # bytes; see serve()


@dataclass
class ServeOptions:
    beam_size: int = 3
    n_best: int = 3
    max_len: int = 30
    batch_size: int = 8  # pictures captioned together at most
    queue_size: int = 32  # pictures waiting at most; with batch_size, the requests admitted at a time
    max_upload: int = 10 * 1024 * 1024  # bytes
    max_pixels: int = 40_000_000  # decoded size limit (a JPEG counts after reduced-size decoding)
    decoders: int = 2  # pictures decoded at the same time at most
    decode_pixels: int = 40_000_000  # decoded pixels of the pictures being decoded together at most
    upload_timeout: float = 30.0  # seconds an upload may take to arrive, from its headers to its last byte
    idle_timeout: float = 5.0  # seconds a connection may wait for a request's headers (a real server)
    max_connections: int = 100  # open connections at most (a real server); more are answered 503
    # Host headers answered: "name" (any port) or "name:port"; "*" answers any. None: serve() answers those of
    # the address it listens on (see allowed_hosts), an app of create_app alone the loopback names.
    allowed_hosts: tuple[str, ...] | None = None


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


class QueueFullError(Exception):
    """The queue is full."""


class StoppingError(Exception):
    """The server is stopping: the picture will not be captioned."""


class Batcher:
    """The model's own thread: takes the waiting pictures, up to batch_size, and captions them together.

    A future is taken with set_running_or_notify_cancel, the protocol of concurrent.futures: a request given up
    while its picture waited (its task cancelled) is skipped, and one being captioned can no longer be given up,
    so setting a result never fails and the thread lives as long as the server."""

    def __init__(self, model: CaptionModel, options: ServeOptions):
        self.model, self.options = model, options
        self.settings = model.settings(None, options.max_len)
        self.queue: queue.Queue = queue.Queue(maxsize=options.queue_size)
        self.batches = 0  # captioned so far, for the health endpoint and the tests
        self.stopping = False
        self.lock = threading.Lock()  # submit and close take turns: nothing is queued after the thread's last look
        self.thread = threading.Thread(target=self._run, name="captioner-model", daemon=True)
        self.thread.start()

    def submit(self, prepared: Prepared) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            if self.stopping:
                raise StoppingError
            try:
                self.queue.put_nowait((prepared, future))
            except queue.Full:
                raise QueueFullError from None
        return future

    def close(self) -> None:
        """Stop: the batch being captioned is answered, the pictures still waiting fail with StoppingError, and
        the thread ends."""
        with self.lock:
            self.stopping = True
            with contextlib.suppress(queue.Full):  # a full queue: the thread is busy and looks again after its batch
                self.queue.put_nowait(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None or self.stopping:
                self._refuse([job])
                return
            jobs = [job] if job[1].set_running_or_notify_cancel() else []
            while len(jobs) < self.options.batch_size:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # close() was called: this batch is the last
                    break
                if job[1].set_running_or_notify_cancel():
                    jobs.append(job)
            if jobs:
                self._caption(jobs)

    def _caption(self, jobs: list) -> None:
        try:
            results = self.model.caption_prepared(
                [p for p, _ in jobs],
                self.options.beam_size,
                self.options.n_best,
                self.options.max_len,
                self.settings,
            )
        except Exception as error:  # noqa: BLE001 - a failed batch fails its requests, never the server
            for _, future in jobs:
                future.set_exception(error)
            return
        self.batches += 1
        for (_, future), result in zip(jobs, results, strict=True):
            future.set_result(result)

    def _refuse(self, jobs: list) -> None:
        """Fail the given jobs and every job still waiting with StoppingError."""
        while True:
            with contextlib.suppress(queue.Empty):
                while True:
                    jobs.append(self.queue.get_nowait())
            for job in jobs:
                if job is not None and job[1].set_running_or_notify_cancel():
                    job[1].set_exception(StoppingError())
            with self.lock:  # submit refuses from now on; anything queued before is taken here
                if self.queue.empty():
                    return
            jobs = []


class PixelBudget:
    """At most `capacity` decoded pixels held by the pictures being decoded together: a decode waits (in its
    worker thread) until its pixels fit; a picture above the whole budget waits until it can have all of it."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        pixels = min(pixels, self.capacity)
        with self.changed:
            self.changed.wait_for(lambda: self.used + pixels <= self.capacity)
            self.used += pixels
        try:
            yield
        finally:
            with self.changed:
                self.used -= pixels
                self.changed.notify_all()


class Admission:
    """Requests in the server (from before their upload is read to their answer) at most `limit`."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0
        self.lock = threading.Lock()

    def enter(self) -> bool:
        with self.lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.count -= 1


def decoded_pixels(data: bytes, target_size: int, max_pixels: int) -> int:
    """The pixels that decoding `data` will hold, from the file's header alone (a JPEG at its reduced-size
    decoding, as image_from_bytes decodes it); 0 where the header says nothing will be decoded (not an image
    this reads, or above max_pixels: refused from the header too)."""
    try:
        with _open_unlimited(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (target_size, target_size))
            pixels = image.width * image.height
    except Exception:  # noqa: BLE001 - whatever the header's fault, the decode itself says it, in one line
        return 0
    return pixels if pixels <= max_pixels else 0


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def require_extra() -> None:
    """ConfigError saying how to install the web server when it is missing."""
    if Starlette is None:
        raise ConfigError("captioner serve needs the web server extra: pip install 'captioner[serve]'")


def create_app(model: CaptionModel, options: ServeOptions | None = None) -> Starlette:
    """The web application around a loaded model."""
    require_extra()
    options = options or ServeOptions()
    handlers = _Handlers(model, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await run_in_threadpool(handlers.close)

    async def refused(request: Request, error: HTTPException) -> JSONResponse:
        allowed = (error.headers or {}).get("Allow", "")
        reasons = {404: "no such page", 405: f"{request.method} is not answered here (only {allowed})"}
        return _error(error.status_code, reasons.get(error.status_code, str(error.detail)), **(error.headers or {}))

    async def failed(request: Request, error: Exception) -> JSONResponse:
        return _error(500, f"the server failed ({type(error).__name__})")

    app = Starlette(
        routes=[
            Route("/", handlers.home),
            Route("/api/caption", handlers.caption, methods=["POST"]),
            Route("/api/health", handlers.health),
        ],
        middleware=[Middleware(_Guard, options=options)],
        exception_handlers={HTTPException: refused, Exception: failed},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # "/api/caption/" is not found (JSON 404), not redirected (an empty 307)
    app.state.batcher = handlers.batcher
    app.state.options = options
    return app


class _Handlers:
    """The routes of one model: the page, the health check, and captioning, which admits a request, reads its
    upload, decodes it (within the decoders and the pixel budget) and waits for the Batcher to caption it."""

    def __init__(self, model: CaptionModel, options: ServeOptions):
        from captioner.report import SERVE_POLICY, page

        self.model, self.options = model, options
        self.batcher = Batcher(model, options)
        self.admission = Admission(options.queue_size + options.batch_size)
        # The decoders' own threads: decoded pictures are allocated and freed in these alone, so the memory that
        # the C allocator keeps per thread after a large picture is kept by `decoders` threads at most.
        self.decoders = concurrent.futures.ThreadPoolExecutor(
            options.decoders, thread_name_prefix="captioner-decode", initializer=_yielding
        )
        self.pixels = PixelBudget(options.decode_pixels)
        self.page = page("serve.html", "captioner", SERVE_POLICY, limit=f"{options.max_upload / 1024 / 1024:g} MB")

    async def home(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "checkpoint": Path(str(self.model.checkpoint)).name,  # a name: no answer tells this machine's paths
                "queued": self.batcher.queue.qsize(),
                "batches": self.batcher.batches,
            }
        )

    async def caption(self, request: Request) -> JSONResponse:
        """POST /api/caption: the upload's caption, or the status and one-line reason it has none."""
        if not self.admission.enter():  # before a byte of the upload is read
            limit = self.admission.limit
            busy = f"busy: {limit} pictures are in the server (read, decoded, waiting or captioned); try again shortly"
            return _error(503, busy, **{"Retry-After": "1"})
        try:
            return await self._caption(request)
        finally:
            self.admission.leave()

    async def _caption(self, request: Request) -> JSONResponse:
        from captioner.report import viewer_entry

        try:
            data, name = await _read_upload(request, self.options)
        except _RefusedError as refused:
            return _error(refused.status, refused.message, **refused.headers)
        except ClientDisconnect:
            return _error(400, "the client went away before the upload ended")
        name = name.replace("\n", " ").replace("\r", " ")[:200]
        try:
            prepared = await run_in_threadpool(self.decode, data, name)
        except ImageLoadError as error:
            return _error(422, str(error))
        del data
        try:
            future = self.batcher.submit(prepared)
        except QueueFullError:
            busy = f"busy: {self.options.queue_size} pictures are waiting; try again shortly"
            return _error(503, busy, **{"Retry-After": "1"})
        except StoppingError:
            return _error(503, f"{name}: the server is stopping; it was not captioned")
        try:
            result: ImageCaption = await asyncio.wrap_future(future)
        except StoppingError:
            return _error(503, f"{name}: the server is stopping; it was not captioned")
        except Exception as error:  # noqa: BLE001
            return _error(500, f"{name}: captioning failed ({type(error).__name__}: {error})")
        if request.query_params.get("picture") in ("1", "true"):
            return JSONResponse(viewer_entry(result))
        return JSONResponse(result.to_dict(attention=True))

    def decode(self, data: bytes, name: str) -> Prepared:
        """The picture ready for the model (from a worker thread, which waits): its pixels wait for room in the
        budget, then it is decoded by one of the decoders, so a picture waiting for room never holds a decoder
        that a smaller one could use."""
        size = self.model.config.data.image_size
        with self.pixels.hold(decoded_pixels(data, size, self.options.max_pixels)):
            return self.decoders.submit(self._prepare, data, name, size).result()

    def _prepare(self, data: bytes, name: str, size: int) -> Prepared:
        picture = image_from_bytes(data, name, size, self.options.max_pixels)
        return self.model.prepare(name, picture)

    def close(self) -> None:
        """Stop the model thread (the waiting pictures are answered 503) and the decoders."""
        self.batcher.close()
        self.decoders.shutdown(wait=False)


def _yielding() -> None:
    """A decoder thread gives way to the model thread and the event loop when the processor is short: a large
    picture's decoding then delays the pictures behind it, not the captions already under way. (Linux sets a
    thread's own niceness this way; elsewhere the call would name a process, so it is left out.)"""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


async def _read_upload(request: Request, options: ServeOptions) -> tuple[bytes, str]:
    """The picture's bytes and name, from a form's "image" field or the raw body; _RefusedError if not (too large,
    too slow, not a form this reads)."""
    max_upload = options.max_upload
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_upload:
        raise _RefusedError(413, f"upload of {int(length)} bytes is above the limit of {max_upload} bytes")
    request = Request(request.scope, _limited(request.receive, options))
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        if length is None:
            raise _RefusedError(411, "a form upload needs a Content-Length header")
        try:
            async with request.form(max_files=1, max_fields=4) as form:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise _RefusedError(400, 'the form has no file in its "image" field')
                return await upload.read(), upload.filename or "upload"
        except (HTTPException, MultiPartException) as error:  # a form Starlette cannot read
            detail = error.detail if isinstance(error, HTTPException) else error.message
            raise _RefusedError(400, f"the form cannot be read: {detail}") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return bytes(body), request.query_params.get("name", "upload")


def _limited(receive, options: ServeOptions):
    """The request's receive, refusing an upload above max_upload bytes (413), whatever its Content-Length said,
    or not received within upload_timeout seconds (408)."""
    loop = asyncio.get_running_loop()
    deadline, received = loop.time() + options.upload_timeout, 0

    async def limited():
        nonlocal received
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            seconds = f"{options.upload_timeout:g} s"
            raise _RefusedError(408, f"upload: not received within {seconds}; send it faster or smaller") from None
        received += len(message.get("body", b""))
        if received > options.max_upload:
            raise _RefusedError(413, f"upload is above the limit of {options.max_upload} bytes")
        return message

    return limited


class _RefusedError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
        # an answer before the whole upload was read ends the connection: what is left of it is not read
        self.headers = {"Connection": "close"} if status in (408, 413) else {}


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


def serve(model: CaptionModel, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None) -> None:
    """Serve until interrupted."""
    import uvicorn
    from PIL import Image

    # Pillow holds a decoded picture in blocks (16 MiB by default). After glibc frees one mapped block it serves
    # blocks of that size from the heap of the thread that asked, and keeps them when they are freed, so every
    # worker thread that once decoded a large picture would go on holding its memory. Blocks above glibc's
    # largest mapping threshold (32 MiB) are always mapped on their own and given back when the picture is freed.
    Image.core.set_block_size(PILLOW_BLOCK)
    options = options or ServeOptions()
    if options.allowed_hosts is None:
        options = dataclasses.replace(options, allowed_hosts=allowed_hosts(host, port))
    app = create_app(model, options)
    print(f"captioner serve: http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.Server(server_config(app, host, port)).run()
