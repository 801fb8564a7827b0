"""Pages of captioned pictures with their attention, one viewer for both: the self-contained report of
`captioner caption --html` and the page of `captioner serve` (captioner/web: viewer.js, viewer.css).

A report is one HTML file holding everything it shows (pictures as JPEG data URLs, the viewer's script and
style, each word's attention map as numbers), so it opens from disk, offline, and can be sent as one file.
"""

from __future__ import annotations

import base64
import io
import json
import re
from importlib import resources
from pathlib import Path

from PIL import Image

from captioner.files import write_text
from captioner.results import ImageCaption


def asset(name: str) -> str:
    """A file of captioner/web, as text."""
    return resources.files("captioner").joinpath("web", name).read_text(encoding="utf-8")


def picture_url(picture: Image.Image, quality: int = 85) -> str:
    """The picture as a JPEG data URL."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def viewer_entry(result: ImageCaption) -> dict:
    """What the viewer draws of a result: its words, every word's map (of each candidate too) and the picture."""
    entry = result.to_dict(attention=True)
    entry.pop("attention_png", None)
    entry["image"] = shown_path(entry["image"])
    entry["picture"] = picture_url(result.picture)
    return entry


def script_json(data) -> str:
    """JSON safe inside a <script> element and still JSON: every <, > and & written as a \\u escape, so no text
    (a file name holding "</script>" or "<!--") can end the element or open a comment in it."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def shown_path(path: str | Path) -> str:
    """A path as a page may show it: relative to the working folder when inside it, else its file name alone (a
    report is sent to others, and an absolute path tells them about this machine)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.name


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def fill(template: str, **values: str) -> str:
    """The template with each {{key}} replaced by its value (already escaped as the place needs), in one pass:
    a value that itself holds "{{key}}" (a title, a caption) is left as written; unknown keys stay."""
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values.get(match[1], match[0]), template)


# What a page may load: nothing from elsewhere; its own inline style and script, and pictures from data: and
# blob: addresses. The page of `captioner serve` may also post to its own server.
REPORT_POLICY = "default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
SERVE_POLICY = REPORT_POLICY + "; connect-src 'self'"


def page(template: str, title: str, policy: str, **values: str) -> str:
    """A page of captioner/web: the shared head (title, content policy, viewer style) and the template's body,
    with the viewer script and the other {{key}}s filled in."""
    whole = fill(asset(template), head=asset("head.html"))
    assets = {"style": asset("viewer.css"), "script": asset("viewer.js")}
    return fill(whole, title=_escape(title), policy=policy, **assets, **values)


def report_html(entries: list[dict], title: str = "captioner report", summary: str = "") -> str:
    """The self-contained report page of viewer entries."""
    return page("report.html", title, REPORT_POLICY, summary=_escape(summary), results=script_json(entries))


def write_report(path: str | Path, entries: list[dict], title: str = "captioner report", summary: str = "") -> None:
    """Write the report atomically (a half-written page never replaces a good one)."""
    write_text(path, report_html(entries, title, summary))
