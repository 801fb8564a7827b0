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

from captioner.serve.app import create_app, require_extra, serve
from captioner.serve.batching import Batcher, ServeOptions
from captioner.serve.guard import allowed_hosts, server_config

__all__ = ["Batcher", "ServeOptions", "allowed_hosts", "create_app", "require_extra", "serve", "server_config"]
