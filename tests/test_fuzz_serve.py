"""HTTP requests to `captioner serve`, fuzzed (see tests/fuzzing.py): the app is called directly with methods,
paths, query strings, bodies (pictures, mutated pictures, random bytes), multipart bodies (well-formed and
broken) and headers (Content-Type, Content-Length, Host, Origin, Sec-Fetch-Site) drawn by Hypothesis.

The only outcomes allowed: 200 with the documented JSON (or the page), or a documented 4xx or 503 with
{"error": one line}; never a 5xx, never plain text, never a hang, never a path of this machine."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import captioner
from captioner.serve import ServeOptions, create_app
from tests.fuzzing import fuzz_settings, record
from tests.servers import asgi

DOCUMENTED = {400, 403, 404, 405, 408, 411, 413, 422, 503}  # docs/web.md
HANG_S = 30  # an answer later than this is a hang
MAX_UPLOAD = 64 * 1024


def _picture(kind: str, size: tuple[int, int] = (24, 16)) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", size, (200, 60, 30)).save(data, format=kind)
    return data.getvalue()


PICTURES = [_picture(kind) for kind in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)


_OTHER = object()


@st.composite
def mostly(draw, usual: list, unusual: st.SearchStrategy):
    """One of `usual` four times in five, else one of `unusual`: most requests get past the Host and origin
    checks to the upload."""
    choice = draw(st.sampled_from(usual * 4 + [_OTHER] * len(usual)))
    return draw(unusual) if choice is _OTHER else choice


@st.composite
def image_bytes(draw) -> bytes:
    """A picture, a picture with some bytes changed or cut short, random bytes, or a body above the limit."""
    kind = draw(st.sampled_from(["picture", "mutated", "mutated", "random", "large"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "large":
        return bytes(MAX_UPLOAD + draw(st.integers(1, 1024)))
    data = bytearray(draw(st.sampled_from(PICTURES)))
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def forms(draw) -> tuple[bytes, str]:
    """A multipart body and its Content-Type: fields and files of any names, then perhaps broken (bytes
    changed, cut short, or its boundary not the one declared)."""
    boundary = draw(st.sampled_from(["b", "----form7MA4YWxk", "x" * 70]))
    body = b""
    names = mostly(["image"], st.sampled_from(["other", "", "imag\u00e9", 'a"b']))
    filenames = mostly(["a.png"], st.none() | TEXT)
    for _ in range(draw(mostly([1], st.integers(0, 3)))):
        name, filename = draw(names), draw(filenames)
        data = draw(image_bytes()) if draw(mostly([True], st.just(False))) else draw(st.binary(max_size=32))
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n"
        body += head.encode("utf-8") + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    broken = draw(mostly(["no"], st.sampled_from(["bytes", "cut", "garbage"])))
    if broken == "bytes" and body:
        changed = bytearray(body)
        for _ in range(draw(st.integers(1, 6))):
            changed[draw(st.integers(0, len(changed) - 1))] = draw(st.integers(0, 255))
        body = bytes(changed)
    elif broken == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif broken == "garbage":
        body = draw(st.binary(max_size=64)) + body
    declared = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f"multipart/form-data; boundary={boundary}",
                f'multipart/form-data; boundary="{boundary}"',
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "multipart/form-data; boundary=other; charset=nonsense",
            ]
        )
    )
    return body, declared


@st.composite
def requests(draw) -> dict:
    method = draw(mostly(["POST"], st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])))
    path = draw(mostly(["/api/caption"], st.sampled_from(["/", "/api/health", "/api/caption/", "/nowhere", "//api"])))
    query = draw(
        st.sampled_from(["", "", "picture=1", "name=a.png", "name=a.png&picture=true"])
        | TEXT.map(lambda text: quote(text, safe="=&"))
        | st.binary(max_size=40).map(lambda data: data.decode("latin-1"))
    )
    if draw(st.booleans()):
        body, content_type = (
            draw(image_bytes()),
            draw(
                st.sampled_from(["", "image/png", "application/octet-stream", "text/plain", "application/json"]) | TEXT
            ),
        )
    else:
        body, content_type = draw(forms())
    headers = []
    host = draw(mostly(["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"], TEXT | st.none()))
    if host is not None:
        headers.append(("host", host))
    if content_type:
        headers.append(("content-type", content_type))
    length = draw(mostly(["right"], st.sampled_from(["none", "wrong", "text", "huge"])))
    if length != "none":
        value = {"right": str(len(body)), "huge": "9" * 30}.get(length)
        if value is None:
            value = str(draw(st.integers(0, 10**7))) if length == "wrong" else draw(TEXT)
        headers.append(("content-length", value))
    origins = st.sampled_from(["http://localhost:8000", "http://attacker.example", "null"]) | TEXT
    origin = draw(mostly([None], origins))
    if origin is not None:
        headers.append(("origin", origin))
    site = draw(mostly([None], st.sampled_from(["same-origin", "same-site", "cross-site", "none"]) | TEXT))
    if site is not None:
        headers.append(("sec-fetch-site", site))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    target = f"{path}?{query}" if query else path
    return {"method": method, "target": target, "body": pieces, "headers": headers}


@pytest.fixture(scope="module")
def served(caption_checkpoint):
    """The app, the event loop its requests run on, and the folder no answer may name."""
    model = captioner.load(caption_checkpoint, device="cpu")
    app = create_app(model, ServeOptions(max_upload=MAX_UPLOAD, upload_timeout=10))
    loop = asyncio.new_event_loop()
    yield app, loop, str(Path(caption_checkpoint).resolve().parent)
    app.state.batcher.close()
    loop.close()


def outcome(method: str, target: str, status: int, headers: dict[str, str], body: bytes) -> str:
    """What became of one request ("200", "422", ...), after checking that it is an answer the docs allow."""
    path = target.partition("?")[0]
    assert status < 500, f"server error {status}: {body[:300]!r}"
    if method == "HEAD" and status in (200, 405):  # what GET would answer, or not allowed; a server sends no body
        assert status == 405 or path in ("/", "/api/health")
    elif status == 200 and path == "/":
        assert headers["content-type"].startswith("text/html")
    elif status == 200:
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        expected = {"status", "checkpoint"} if path == "/api/health" else {"image", "caption", "words", "attention"}
        assert expected <= answer.keys(), answer
    else:
        assert status in DOCUMENTED, f"undocumented status {status}: {body[:300]!r}"
        assert headers["content-type"] == "application/json", f"{status} as {headers.get('content-type')}: {body!r}"
        answer = json.loads(body)
        assert list(answer) == ["error"] and isinstance(answer["error"], str), answer
        assert answer["error"] and "\n" not in answer["error"], answer
    return str(status)


@fuzz_settings(ci=200)
@given(drawn=requests())
def test_every_request_gets_a_documented_answer(served, drawn):
    app, loop, folder = served
    try:
        status, headers, body = loop.run_until_complete(asyncio.wait_for(asgi(app, **drawn), HANG_S))
    except TimeoutError:
        record("http", "hang")
        raise AssertionError(f"no answer within {HANG_S} s") from None
    result = outcome(drawn["method"], drawn["target"], status, headers, body)
    assert folder.encode() not in body
    record("http", result)
