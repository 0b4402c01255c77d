"""The explore web server: a static page and a small JSON API over an :class:`Explorer`, from the standard library.

Routes (all GET unless noted):

- ``/``, ``/static/app.js``, ``/static/style.css``: the page;
- ``/api/status``: the gallery, each model's state and embedding progress, text-to-image state;
- ``/api/search?q=TEXT&k=8[&models=a,b]``: top-k gallery images per model for a caption;
- ``POST /api/search-image?k=8[&models=a,b]`` (body: the image file): top-k gallery captions per model;
- ``/api/generate?q=TEXT[&models=a,b]``: one image per model's text encoder (``--sd``), returns image ids;
- ``/thumb/ID?view=blurred|clear``, ``/generated/ID?view=blurred|clear``: PNG thumbnails. A safe gallery image
  is always sent clear; an unsafe or unknown one, and every generated image, only when ``view=clear``.

Bad input answers ``400`` with ``{"error": "..."}``, which the page shows. It listens on 127.0.0.1 unless the
user names another host.

    server = serve(explorer, host="127.0.0.1", port=0)   # port 0: any free port
    print(server.url); server.serve_forever()
"""

from __future__ import annotations

import io
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image, UnidentifiedImageError

from safeclip.explore.search import Explorer, QueryError
from safeclip.explore.thumbnails import file_thumbnail_png, thumbnail_png

MAX_UPLOAD_BYTES = 32 * 2**20
LOOPBACK = ("127.0.0.1", "::1")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}


def static_file(name: str) -> bytes:
    return (resources.files("safeclip.explore") / "static" / name).read_bytes()


class ExploreServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its :class:`Explorer` and its own URL."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, host: str, port: int) -> None:
        super().__init__((host, port), ExploreHandler)
        self.explorer = explorer

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"


class ExploreHandler(BaseHTTPRequestHandler):
    server: ExploreServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # the terminal shows progress and errors, not every thumbnail request

    # ------------------------------------------------------------------ replies

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(data).encode(), "application/json", status)

    def _error(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        self._json({"error": message}, status)

    # ------------------------------------------------------------------ routing

    def _host_refused(self) -> bool:
        """On a loopback address, answer only requests addressed to this machine (no DNS rebinding from a web site)."""
        if self.server.server_address[0] not in LOOPBACK:
            return False
        host = (self.headers.get("Host") or "").strip()
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name in LOOPBACK or name == "localhost":
            return False
        self._error(f"this page answers requests for 127.0.0.1 or localhost only, not {host!r}", HTTPStatus.FORBIDDEN)
        return True

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if self._host_refused():
            return
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path in STATIC:
                name, content_type = STATIC[url.path]
                return self._send(static_file(name), content_type)
            if url.path == "/api/status":
                return self._json(self.server.explorer.status())
            if url.path == "/api/search":
                return self._json(self.server.explorer.search_text(params.get("q", ""), k=_k(params),
                                                                   labels=_labels(params)))
            if url.path == "/api/generate":
                return self._json(self.server.explorer.paint(params.get("q", ""), labels=_labels(params)))
            if url.path.startswith("/thumb/"):
                return self._thumbnail(url.path.removeprefix("/thumb/"), params.get("view") == "clear")
            if url.path.startswith("/generated/"):
                return self._generated(url.path.removeprefix("/generated/"), params.get("view") == "clear")
            return self._error(f"no page {url.path}; open / for the explore page", HTTPStatus.NOT_FOUND)
        except QueryError as err:
            return self._error(str(err))
        except Exception as err:  # noqa: BLE001 - the page shows a message; the terminal the traceback
            return self._internal_error(err)

    def _internal_error(self, err: Exception) -> None:
        import traceback

        traceback.print_exc()
        self._error(f"internal error: {err.__class__.__name__}: {err} (the terminal running safeclip explore shows "
                    "the traceback)", HTTPStatus.INTERNAL_SERVER_ERROR)

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        if self._host_refused():
            return
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path != "/api/search-image":
            return self._error(f"no POST route {url.path}", HTTPStatus.NOT_FOUND)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES:
            return self._error(f"the uploaded file has {length / 2**20:.0f} MiB; images up to {MAX_UPLOAD_BYTES // 2**20} MiB "
                               "are accepted")
        body = self.rfile.read(length)
        try:
            image = read_upload(body)
            return self._json(self.server.explorer.search_image(image, k=_k(params), labels=_labels(params)))
        except QueryError as err:
            return self._error(str(err))
        except Exception as err:  # noqa: BLE001
            return self._internal_error(err)

    # ------------------------------------------------------------------ images

    def _thumbnail(self, key: str, clear: bool) -> None:
        gallery = self.server.explorer.gallery
        if gallery is None or not key.isdigit() or int(key) >= len(gallery.images):
            return self._error(f"no gallery image {key}", HTTPStatus.NOT_FOUND)
        item = gallery.images[int(key)]
        path = Path(item.value)
        blurred = item.label != "safe" and not clear
        try:
            png = file_thumbnail_png(str(path), blurred, path.stat().st_mtime_ns)
        except (OSError, UnidentifiedImageError) as err:
            return self._error(f"gallery image {path} cannot be read ({err.__class__.__name__})", HTTPStatus.NOT_FOUND)
        self._send(png, "image/png")

    def _generated(self, key: str, clear: bool) -> None:
        image = self.server.explorer.generated.get(key)
        if image is None:
            return self._error(f"no generated image {key}", HTTPStatus.NOT_FOUND)
        self._send(thumbnail_png(image, blurred=not clear), "image/png")


def _k(params: dict) -> int:
    raw = params.get("k", "8")
    if not raw.strip().lstrip("-").isdigit():
        raise QueryError(f"k must be a whole number of results, got {raw!r}")
    return int(raw)


def _labels(params: dict) -> list[str] | None:
    raw = params.get("models", "")
    return [label.strip() for label in raw.split(",") if label.strip()] or None


def read_upload(body: bytes) -> Image.Image:
    """The uploaded bytes as an RGB image; anything else is a :class:`QueryError` the page shows."""
    if not body:
        raise QueryError("no image was uploaded: choose an image file (PNG, JPEG, WebP...)")
    try:
        with Image.open(io.BytesIO(body)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise QueryError(f"the uploaded file is not a readable image ({err.__class__.__name__}); "
                         "upload a PNG, JPEG or WebP image") from err


def serve(explorer: Explorer, *, host: str = "127.0.0.1", port: int = 7860) -> ExploreServer:
    """A bound :class:`ExploreServer` (call ``serve_forever``); ``port=0`` picks a free port."""
    return ExploreServer(explorer, host, port)


def serve_in_thread(explorer: Explorer, *, host: str = "127.0.0.1", port: int = 0) -> ExploreServer:
    """Start a server in a daemon thread (tests, notebooks); stop it with ``server.shutdown()``."""
    server = serve(explorer, host=host, port=port)
    threading.Thread(target=server.serve_forever, name="explore-server", daemon=True).start()
    return server
