"""`captioner serve`: the JSON endpoint's answers and refusals, batching, a full queue, a failing batch, requests
cancelled or refused before their body is read, the pixel budget of decoding, the guards of a server left running
(Host allow-list, cross-origin posts, security headers, timeouts, the connection cap), the page in a browser, and a
load of concurrent good and broken uploads against a real `captioner serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

import captioner
from captioner.cli import main
from captioner.report import REPORT_POLICY, SERVE_POLICY, report_html, shown_path
from captioner.serve import ServeOptions, create_app
from tests.servers import ProcessServer, ThreadServer, asgi, browser_missing, chromium, load


@pytest.fixture(scope="module")
def model(caption_checkpoint):
    return captioner.load(caption_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def picture(shapes_root) -> Path:
    return sorted((Path(shapes_root) / "images").glob("*.png"))[0]


def client(model, **options) -> TestClient:
    return TestClient(create_app(model, ServeOptions(**options)), base_url="http://localhost")


def test_a_picture_gets_the_caption_the_api_gives(model, picture):
    expected = model.caption([picture], beam_size=3, n_best=3)[0]
    with client(model) as web:
        raw = web.post("/api/caption?name=shape.png", content=picture.read_bytes())
        form = web.post("/api/caption?picture=1", files={"image": ("shape.png", picture.read_bytes(), "image/png")})
        page = web.get("/")
    for answer in (raw, form):
        assert answer.status_code == 200
        body = answer.json()
        assert body["image"] == "shape.png"
        assert body["caption"] == expected.caption and body["words"] == expected.words
        assert [c["caption"] for c in body["candidates"]] == [c.caption for c in expected.candidates]
        assert len(body["attention"]) == len(body["words"]) and len(body["attention"][0]) == model.grid_size**2
    assert "picture" not in raw.json() and form.json()["picture"].startswith("data:image/jpeg;base64,")
    assert page.status_code == 200 and "captioner.card" in page.text
    assert f'content="{SERVE_POLICY}"' in page.text and "connect-src 'self'" in SERVE_POLICY


def test_the_report_fills_its_page_once_and_escapes_what_it_is_given():
    # A title or caption holding a {{key}} of the template stays as written: nothing given is filled twice.
    text = report_html([{"caption": "{{script}}"}], title="<{{style}}>", summary="{{results}} & more")
    assert "<title>&lt;{{style}}&gt;</title>" in text and "<p>{{results}} &amp; more</p>" in text
    assert '"caption":"{{script}}"' in text and f'content="{REPORT_POLICY}"' in text
    assert text.count("captioner.card") == 1 and "{{head}}" not in text and "{{policy}}" not in text
    # a name that would end the script element or open a comment in it is JSON the page reads back as written
    entries = [{"image": "<!--a--></script><img src=x onerror=alert(1)>.png", "caption": "a & b"}]
    text = report_html(entries)
    start = text.index('id="captioner-results">') + len('id="captioner-results">')
    embedded = text[start : text.index("</script>", start)]
    assert json.loads(embedded) == entries and "<" not in embedded


def test_the_report_shows_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "photos" / "cat.jpg") == "photos/cat.jpg"
    assert shown_path("/elsewhere/runs/best.pt") == "best.pt" and shown_path("cat.jpg") == "cat.jpg"


def test_what_is_not_a_usable_picture_gets_its_reason(model, picture, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cut = tmp_path / "cut.png"
    cut.write_bytes(picture.read_bytes()[:200])
    with client(model, max_upload=4096) as web:
        for path in (text, cut):
            answer = web.post("/api/caption", files={"image": (path.name, path.read_bytes(), "image/png")})
            assert answer.status_code == 422
            assert main(["caption", str(path), "--checkpoint", str(model.checkpoint)]) == 1  # the CLI's reason:
            # `captioner: skipped PATH: REASON`; the server names the upload by its file name instead of its path
            assert answer.json()["error"].split(": ", 1)[1] == _cli_reason(path)
        empty = web.post("/api/caption", content=b"")
        assert empty.status_code == 422 and empty.json()["error"] == "upload: empty file, not an image"
        big = web.post("/api/caption", content=b"x" * 5000)
        assert big.status_code == 413 and "above the limit of 4096 bytes" in big.json()["error"]
        field = web.post("/api/caption", files={"other": ("a.png", picture.read_bytes(), "image/png")})
        assert field.status_code == 400 and "image" in field.json()["error"]
        large = Image.new("RGB", (3000, 3000))
        data = io.BytesIO()
        large.save(data, format="PNG")
    with client(model, max_pixels=1_000_000) as web:
        answer = web.post("/api/caption?name=large.png", content=data.getvalue())
        assert answer.status_code == 422
        limit = "above the 1 megapixel limit for PNG files; resize it first"
        assert answer.json()["error"] == f"large.png: 3000 x 3000 pixels is {limit}"


def _cli_reason(path: Path) -> str:
    from captioner.data.images import load_image
    from captioner.errors import ImageLoadError

    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    return str(info.value).split(": ", 1)[1]


def test_waiting_requests_are_captioned_together_and_a_full_queue_answers_503(model, picture, monkeypatch):
    """The model thread is held on its first batch; the next requests wait, the queue fills, one more is refused;
    released, the waiting ones are captioned in one batch."""
    release, entered = threading.Event(), threading.Event()
    original = model.caption_prepared
    sizes = []

    def held(prepared, *args):
        entered.set()
        release.wait(30)
        sizes.append(len(prepared))
        return original(prepared, *args)

    monkeypatch.setattr(model, "caption_prepared", held)
    answers = {}
    with client(model, queue_size=3, batch_size=8) as web:

        def post(i):
            answers[i] = web.post(f"/api/caption?name={i}.png", content=picture.read_bytes())

        first = threading.Thread(target=post, args=(0,))
        first.start()
        assert entered.wait(30)
        waiting = [threading.Thread(target=post, args=(i,)) for i in (1, 2, 3)]
        for thread in waiting:
            thread.start()
        app = web.app
        while app.state.batcher.queue.qsize() < 3:
            threading.Event().wait(0.01)
        refused = web.post("/api/caption?name=4.png", content=picture.read_bytes())
        release.set()
        for thread in [first, *waiting]:
            thread.join(30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "3 pictures are waiting" in refused.json()["error"]
    assert [answers[i].status_code for i in range(4)] == [200] * 4
    assert sizes == [1, 3]


def test_a_failing_batch_fails_its_requests_not_the_server(model, picture, monkeypatch):
    original = model.caption_prepared
    calls = []

    def flaky(prepared, *args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return original(prepared, *args)

    monkeypatch.setattr(model, "caption_prepared", flaky)
    with client(model) as web:
        failed = web.post("/api/caption?name=a.png", content=picture.read_bytes())
        good = web.post("/api/caption?name=a.png", content=picture.read_bytes())
    assert failed.status_code == 500
    assert failed.json()["error"] == "a.png: captioning failed (RuntimeError: out of memory)"
    assert good.status_code == 200


def hold(model, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The model thread held in its first batch: (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    original = model.caption_prepared

    def held(prepared, *args):
        entered.set()
        release.wait(30)
        return original(prepared, *args)

    monkeypatch.setattr(model, "caption_prepared", held)
    return entered, release


@contextlib.contextmanager
def served(model, **options):
    """An app called directly (no server, no lifespan); its model thread is stopped afterwards."""
    app = create_app(model, ServeOptions(**options))
    try:
        yield app
    finally:
        app.state.batcher.close()


async def until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def post(app, name: str, data: bytes, **kwargs):
    return asgi(app, "POST", f"/api/caption?name={name}", data, **kwargs)


def test_a_request_cancelled_while_its_picture_waits_leaves_the_model_thread_serving(model, picture, monkeypatch):
    """A request's task cancelled while its picture waits for the model (a timeout around the app, a shutdown):
    the model thread skips the picture and goes on answering."""
    entered, release = hold(model, monkeypatch)
    data = picture.read_bytes()
    with served(model) as app:

        async def scenario():
            first = asyncio.create_task(post(app, "a.png", data))
            await asyncio.to_thread(entered.wait, 30)
            second = asyncio.create_task(post(app, "b.png", data))
            await until(lambda: app.state.batcher.queue.qsize() == 1)
            second.cancel()
            release.set()
            answered = await first
            with pytest.raises(asyncio.CancelledError):
                await second
            return answered, await asyncio.wait_for(post(app, "c.png", data), 20)

        first, later = asyncio.run(scenario())
    assert first[0] == 200 and later[0] == 200 and json.loads(later[2])["image"] == "c.png"


def test_stopping_answers_the_waiting_requests_503_and_ends_the_model_thread(model, picture, monkeypatch):
    """Stopped while a batch is being captioned and two pictures wait: the batch is answered, the waiting
    pictures are answered 503, the thread ends, and a request after that is answered 503 too (never left waiting)."""
    entered, release = hold(model, monkeypatch)
    data = picture.read_bytes()
    app = create_app(model, ServeOptions())
    batcher = app.state.batcher

    async def scenario():
        tasks = [asyncio.create_task(post(app, "a.png", data))]
        await asyncio.to_thread(entered.wait, 30)
        tasks += [asyncio.create_task(post(app, name, data)) for name in ("b.png", "c.png")]
        await until(lambda: batcher.queue.qsize() == 2)
        closing = asyncio.create_task(asyncio.to_thread(batcher.close))
        await until(lambda: batcher.queue.qsize() == 3)  # close() has told the thread to stop
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await closing
        return answers, await asyncio.wait_for(post(app, "d.png", data), 20)

    answers, later = asyncio.run(scenario())
    assert [status for status, _, _ in answers] == [200, 503, 503]
    assert json.loads(answers[1][2]) == {"error": "b.png: the server is stopping; it was not captioned"}
    assert later[0] == 503 and "stopping" in json.loads(later[2])["error"]
    assert not batcher.thread.is_alive()


def test_a_request_beyond_those_admitted_is_answered_503_before_its_body_is_read(model, picture, monkeypatch):
    """A queue of 1 and batches of 1 admit two requests: one captioned, one waiting. A third is refused without
    a byte of its upload read, so uploads in memory are bounded by the admitted, not by the connections."""
    entered, release = hold(model, monkeypatch)
    data = picture.read_bytes()
    with served(model, queue_size=1, batch_size=1) as app:

        async def scenario():
            first = asyncio.create_task(post(app, "a.png", data))
            await asyncio.to_thread(entered.wait, 30)
            second = asyncio.create_task(post(app, "b.png", data))
            await until(lambda: app.state.batcher.queue.qsize() == 1)
            reads: list[int] = []
            refused = await asyncio.wait_for(post(app, "c.png", data, reads=reads), 20)
            release.set()
            return refused, reads, await first, await second

        refused, reads, first, second = asyncio.run(scenario())
    assert refused[0] == 503 and refused[1]["retry-after"] == "1" and reads == []
    assert json.loads(refused[2]) == {
        "error": "busy: 2 pictures are in the server (read, decoded, waiting or captioned); try again shortly"
    }
    assert first[0] == 200 and second[0] == 200


def test_concurrent_decodes_hold_at_most_the_pixel_budget(model, picture, monkeypatch):
    """Four 1500 x 1500 pictures (2.25 megapixels each) sent at once to a server with four decoders and a budget
    of 3 megapixels are decoded one at a time; small pictures are decoded beside them."""
    import captioner.serve.app

    original = captioner.serve.app.image_from_bytes
    lock, held, most = threading.Lock(), [0], [0]

    def counted(data, name, *args):
        with Image.open(io.BytesIO(data)) as header:
            pixels = header.width * header.height
        with lock:
            held[0] += pixels
            most[0] = max(most[0], held[0])
        try:
            time.sleep(0.2)  # long enough for the others to start, were they let in
            return original(data, name, *args)
        finally:
            with lock:
                held[0] -= pixels

    monkeypatch.setattr(captioner.serve.app, "image_from_bytes", counted)
    large = io.BytesIO()
    Image.new("RGB", (1500, 1500), (20, 120, 200)).save(large, format="PNG")
    uploads = [large.getvalue()] * 4 + [picture.read_bytes()] * 2
    statuses = {}
    with client(model, decoders=4, decode_pixels=3_000_000) as web:

        def send(i):
            statuses[i] = web.post(f"/api/caption?name={i}.png", content=uploads[i]).status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(uploads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert statuses == {i: 200 for i in range(len(uploads))}
    assert 2_250_000 <= most[0] <= 3_000_000


def test_every_refusal_is_json_with_its_reason_in_one_line(model, picture):
    png = ("a.png", picture.read_bytes(), "image/png")
    form = {"content-type": "multipart/form-data; boundary=b"}
    with client(model) as web:
        answers = {
            "two files": web.post("/api/caption", files=[("image", png), ("image", png)]),
            "too many fields": web.post("/api/caption", files={"image": png}, data={f"f{i}": "x" for i in range(5)}),
            "broken form": web.post(
                "/api/caption", content=b"--b\r\nContent-Disposition: form-data\r\n\r\nx", headers=form
            ),
            "no boundary": web.post("/api/caption", content=b"x", headers={"content-type": "multipart/form-data"}),
            "no such page": web.get("/nowhere"),
            "wrong method": web.get("/api/caption"),
        }
    for what, answer in answers.items():
        assert 400 <= answer.status_code < 500, what
        assert answer.headers["content-type"] == "application/json", (what, answer.text)
        assert list(answer.json()) == ["error"] and "\n" not in answer.json()["error"], what
    assert (
        answers["two files"].json()["error"] == "the form cannot be read: Too many files. Maximum number of files is 1."
    )
    assert answers["no such page"].status_code == 404 and answers["wrong method"].status_code == 405


def test_every_answer_carries_the_security_headers(model, picture):
    with client(model) as web:
        answers = [
            web.get("/"),
            web.get("/api/health"),
            web.post("/api/caption", content=picture.read_bytes()),
            web.post("/api/caption", content=b"not a picture"),
            web.get("/nowhere"),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 422, 404]
    for answer in answers:
        assert answer.headers["content-security-policy"] == SERVE_POLICY + "; frame-ancestors 'none'"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"


def test_only_the_host_names_of_the_listening_address_are_answered(model, picture):
    """A page elsewhere whose name was made to point at 127.0.0.1 (DNS rebinding) sends its own name as the Host:
    refused, so it can neither read the health check nor make the model work."""
    from captioner.serve import allowed_hosts

    loopback = ("localhost:8000", "127.0.0.1:8000", "[::1]:8000")
    assert (
        allowed_hosts("127.0.0.1", 8000) == allowed_hosts("localhost", 8000) == allowed_hosts("::1", 8000) == loopback
    )
    assert allowed_hosts("0.0.0.0", 8000) == allowed_hosts("::", 8000) == ("*",)
    assert allowed_hosts("0.0.0.0", 8000, ["box.lan"]) == ("box.lan:8000", *loopback)
    assert allowed_hosts("192.168.1.5", 80, ["box.lan:8080"]) == ("192.168.1.5:80", "box.lan:8080")
    data = picture.read_bytes()
    with served(model, allowed_hosts=loopback) as app:

        async def scenario():
            good = [await asgi(app, "GET", "/api/health", headers=[("host", h)]) for h in (*loopback, "LocalHost:8000")]
            bad = ["attacker.example:8000", "localhost:9000", "localhost", "127.0.0.1:8000.attacker.example", ""]
            refused = [await asgi(app, "GET", "/api/health", headers=[("host", h)]) for h in bad]
            refused.append(await asgi(app, "GET", "/api/health", headers=[]))
            refused.append(await post(app, "a.png", data, headers=[("host", "attacker.example:8000")]))
            return good, refused

        good, refused = asyncio.run(scenario())
        assert app.state.batcher.batches == 0
    assert [status for status, _, _ in good] == [200] * 4
    assert [status for status, _, _ in refused] == [400] * 7
    assert json.loads(refused[0][2]) == {
        "error": "Host attacker.example:8000 is not this server's (captioner serve --allow-host NAME adds one)"
    }
    with served(model, allowed_hosts=allowed_hosts("127.0.0.1", 80)) as app:
        status, _, _ = asyncio.run(asgi(app, "GET", "/api/health", headers=[("host", "localhost")]))
    assert status == 200  # port 80 goes without saying


def test_cross_origin_posts_are_refused(model, picture):
    """A page elsewhere may post a picture to the server with a simple request (text/plain, no preflight): the
    browser names its origin (Origin, Sec-Fetch-Site) and the server refuses it; the page itself and tools that
    name no origin (curl) are answered."""
    data, host = picture.read_bytes(), ("host", "localhost:8000")
    plain = ("content-type", "text/plain")
    with served(model) as app:

        async def scenario():
            refused = [
                await post(app, "a.png", data, headers=[host, plain, ("origin", "http://attacker.example")]),
                await post(app, "a.png", data, headers=[host, plain, ("origin", "null")]),
                await post(app, "a.png", data, headers=[host, plain, ("origin", "http://localhost:9000")]),
                await post(app, "a.png", data, headers=[host, plain, ("sec-fetch-site", "cross-site")]),
                await post(app, "a.png", data, headers=[host, plain, ("sec-fetch-site", "same-site")]),
            ]
            answered = [
                await post(app, "a.png", data, headers=[host, ("origin", "http://localhost:8000")]),
                await post(app, "a.png", data, headers=[host, ("sec-fetch-site", "same-origin")]),
                await post(app, "a.png", data, headers=[host]),
            ]
            return refused, answered

        refused, answered = asyncio.run(scenario())
        assert app.state.batcher.batches == len(answered)
    assert [status for status, _, _ in refused] == [403] * 5
    assert [status for status, _, _ in answered] == [200] * 3
    error = json.loads(refused[0][2])["error"]
    assert error == "a request from http://attacker.example, another site, is refused"


def test_no_answer_names_an_absolute_path(model, picture):
    folder = str(Path(model.checkpoint).resolve().parent)
    with client(model) as web:
        health = web.get("/api/health")
        answers = [health, web.get("/"), web.post("/api/caption", content=picture.read_bytes())]
    assert health.json()["checkpoint"] == Path(model.checkpoint).name
    assert not any(folder in answer.text for answer in answers)


def raw(port: int, data: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(data)
    return connection


def answer(connection: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(connection)
    response.begin()
    return response.status, json.loads(response.read())


def closed(connection: socket.socket) -> bool:
    """Whether the server closed the connection (within the socket's timeout)."""
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_half_sent_and_slow_clients_are_cut_off_and_connections_are_capped(model, picture):
    """On a real server (uvicorn as `captioner serve` runs it): connections that send nothing or half their
    headers are closed after the idle timeout, an upload that stalls is answered 408, a connection above the cap
    is answered 503 and closed, and bytes that are not HTTP are answered 400, each as JSON."""
    options = ServeOptions(idle_timeout=1.0, upload_timeout=1.0, max_connections=4)
    with ThreadServer(create_app(model, options)) as url:
        port = int(url.rsplit(":", 1)[1])
        start = time.monotonic()
        waiting = [raw(port, b"") for _ in range(2)] + [raw(port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1")]
        waiting.append(raw(port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))  # answered, then idle
        extra = raw(port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, body = answer(extra)
        assert status == 503 and body == {"error": "busy: 4 connections are open; try again shortly"}
        assert closed(extra)
        assert answer(waiting[-1])[0] == 200
        assert all(closed(connection) for connection in waiting)
        assert time.monotonic() - start < 5
        slow = raw(port, b"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        status, body = answer(slow)
        assert status == 408 and body == {"error": "upload: not received within 1 s; send it faster or smaller"}
        assert closed(slow)
        assert answer(raw(port, b"NOT HTTP AT ALL\r\n\r\n")) == (400, {"error": "not an HTTP/1.1 request"})
        good = raw(port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer(good)[0] == 200


BROWSER = browser_missing()


@pytest.mark.skipif(BROWSER is not None, reason=BROWSER or "")
def test_the_page_retries_the_same_file_fits_tall_pictures_and_lists_each_caption_once(model, tmp_path, monkeypatch):
    """A 40 x 1200 picture is drawn within the window, not thousands of pixels high; two candidates of the same
    text are listed once; choosing the same file again (after a 503, say) sends it again."""
    tall = tmp_path / "tall.png"
    Image.new("RGB", (40, 1200), (200, 40, 40)).save(tall)
    original = model.caption_prepared

    def doubled(prepared, *args):
        results = original(prepared, *args)
        for result in results:
            best = result.candidates[0]
            result.candidates.insert(1, dataclasses.replace(best, score=best.score - 0.5))
        return results

    monkeypatch.setattr(model, "caption_prepared", doubled)
    browser = chromium(1200, 900)
    try:
        with ThreadServer(create_app(model)) as url:
            browser.get(url)
            upload = browser.find_element("id", "file")

            def cards():
                return browser.find_elements("css selector", ".cap-card")

            upload.send_keys(str(tall))
            wait_for(lambda: len(cards()) == 1)
            card = cards()[0]
            height = browser.execute_script(
                "return arguments[0].querySelector('canvas').getBoundingClientRect().height", card
            )
            assert 100 < height <= 600
            options = [option.text for option in card.find_elements("css selector", ".cap-candidate")]
            assert len(options) == len(set(options)) >= 1
            upload.send_keys(str(tall))
            wait_for(lambda: len(cards()) == 2)
    finally:
        browser.quit()


def wait_for(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_load_of_good_and_broken_uploads_on_a_real_server(caption_checkpoint, shapes_root, capsys):
    """200 requests, 8 at a time, a third of them broken files: no server error, every broken file answered with
    its reason, bounded latency and memory (reported). Then six large canvases at once, each decoded in a worker
    thread: the memory they took is given back."""
    pictures = sorted((Path(shapes_root) / "images").glob("*.png"))[:4]
    files = [(p.name, p.read_bytes(), None) for p in pictures]
    files += [
        ("notes.txt", b"plain text", "notes.txt: not an image (unrecognised file format)"),
        ("empty.png", b"", "empty.png: empty file, not an image"),
    ]
    canvas = io.BytesIO()
    Image.new("RGB", (4000, 4000), "white").save(canvas, format="PNG")
    with ProcessServer(caption_checkpoint) as server:
        result = load(server.port, files, count=200, concurrency=8)
        peak = server.peak_memory_mb()
        before = server.peak_memory_mb("VmRSS")
        large = load(server.port, [("canvas.png", canvas.getvalue(), None)], count=6, concurrency=6)
        kept = server.peak_memory_mb("VmRSS") - before
    with capsys.disabled():
        print(
            f"\nload test: {result.requests} requests at concurrency 8 in {result.seconds:.1f} s, statuses "
            f"{result.statuses}, p50 {result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, server peak {peak:.0f} MiB; "
            f"six 4000 x 4000 canvases kept {kept:.0f} MiB"
        )
    assert result.wrong == [] and large.wrong == []
    assert not any(status >= 500 for status in result.statuses)
    assert sum(result.statuses.values()) == 200
    assert kept < 150  # MiB: a decoded canvas alone is 61 MiB (4 bytes a pixel), and each decode makes copies
