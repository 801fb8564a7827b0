"""The web application of `captioner serve`: the routes, reading and decoding an upload, and serve()."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import sys
import threading
from pathlib import Path

from captioner.data.images import image_from_bytes
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

from captioner.serve.batching import (
    Admission,
    Batcher,
    PixelBudget,
    QueueFullError,
    ServeOptions,
    StoppingError,
    decoded_pixels,
)
from captioner.serve.guard import _error, _Guard, allowed_hosts, server_config

PILLOW_BLOCK = 64 * 1024 * 1024  # bytes; see serve()


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
