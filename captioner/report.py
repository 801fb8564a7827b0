"""Pages of captioned pictures with their attention, one viewer for both: the self-contained report of
`captioner caption --html` and the page of `captioner serve` (captioner/web: viewer.js, viewer.css).

A report is one HTML file holding everything it shows (pictures as JPEG data URLs, the viewer's script and
style, each word's attention map as numbers), so it opens from disk, offline, and can be sent as one file.
"""

from __future__ import annotations

import base64
import io
import json
from importlib import resources
from pathlib import Path

from PIL import Image

from captioner.files import write_text
from captioner.pipeline import ImageCaption


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
    entry["picture"] = picture_url(result.picture)
    return entry


def script_json(data) -> str:
    """JSON safe inside a <script> element: no "</" (which would end the element) nor HTML comment openers."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def fill(template: str, **values: str) -> str:
    """The template with each {{key}} replaced by its value (already escaped as the place needs)."""
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def report_html(entries: list[dict], title: str = "captioner report", summary: str = "") -> str:
    """The self-contained report page of viewer entries."""
    return fill(
        asset("report.html"),
        title=_escape(title),
        summary=_escape(summary),
        style=asset("viewer.css"),
        script=asset("viewer.js"),
        results=script_json(entries),
    )


def write_report(path: str | Path, entries: list[dict], title: str = "captioner report", summary: str = "") -> None:
    """Write the report atomically (a half-written page never replaces a good one)."""
    write_text(path, report_html(entries, title, summary))
