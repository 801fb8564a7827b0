"""The model's side of `captioner serve`: its options, the thread that captions queued pictures in batches, and
the budgets that bound memory (requests admitted, decoded pixels)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import queue
import threading
from dataclasses import dataclass

from captioner.data.images import _open_unlimited
from captioner.pipeline import CaptionModel, Prepared


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
