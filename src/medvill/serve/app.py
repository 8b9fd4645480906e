"""The web app of ``medvill serve``: a Starlette ASGI app, one page (plain HTML + JS) and a JSON API.

* ``GET /``: the page (``static/index.html``, with ``static/app.js`` and ``static/style.css``);
* ``GET /api/info``: the checkpoint's tasks (with a note for each missing one), the report
  pool and the upload limits;
* ``POST /api/upload``: the raw image file as the body (header ``X-Filename``: its name) ->
  an id, its size, notes on how it was read and a preview of what the model sees;
* ``POST /api/classify`` ``{id, report?}`` -> the 14 observation probabilities;
* ``POST /api/generate`` ``{id}`` -> a generated report;
* ``POST /api/explain`` ``{id, text, task?}`` -> the words of the text and the model's layers;
* ``POST /api/overlay`` ``{id, text, word, layer?, task?}`` -> the attention overlay (PNG data URL);
* ``POST /api/answer`` ``{id, question}`` -> the answer, its probability and the top 3;
* ``POST /api/similar`` ``{id, k?}`` -> the ``k`` most similar reports of the pool.

Errors are JSON ``{"error": message}`` with a 4xx status for bad input (shown on the page as
it is) and 500 for anything unexpected (the page gets a short message; the traceback goes to
the server log).  Models run in a worker thread, one request at a time, so the event loop
keeps serving the page and reading uploads meanwhile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..inference import MissingTaskError
from .service import DemoService, UserError

log = logging.getLogger(__name__)

#: Largest JSON request body (texts are limited far below this).
MAX_JSON_BYTES = 256 * 1024
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files(__package__) / "static"
    files = {}
    for name in ("index.html", "app.js", "style.css"):
        files[name] = ((root / name).read_bytes(), STATIC_TYPES["." + name.rsplit(".", 1)[1]])
    return files


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


async def _read_body(request: Request, limit: int, too_large: Callable[[int | None], str]) -> bytes:
    """The request body, refused with 413 once it passes ``limit`` bytes (the declared
    Content-Length is checked first, then what actually arrives)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise UserError(400, "invalid Content-Length header") from None
        if n > limit:
            raise UserError(413, too_large(n))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UserError(413, too_large(None))
    return bytes(body)


#: the deepest JSON nesting a request may have (the API's bodies are flat objects)
MAX_JSON_DEPTH = 8


def _json_depth_ok(body: bytes, limit: int) -> bool:
    """Whether ``body``'s arrays and objects nest at most ``limit`` deep, counted in one pass
    without parsing (brackets inside strings do not count), so a body nested 100,000 deep is
    refused before the parser recurses into it."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return True


def _check_strings(value: Any, path: str = "body") -> None:
    """Every string (and key) is valid Unicode text: a lone surrogate (``"\\ud800"``) passes
    JSON but not the tokenizer or any encoder."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(400, f"{path} holds an invalid character (a lone UTF-16 surrogate)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, path)
            _check_strings(v, f"{k!r}")
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, path)


async def _json(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object, checked against the endpoint's ``fields`` (its schema: an
    unknown key is a 400 naming it; each field's type is checked by :func:`_field`)."""
    body = await _read_body(request, MAX_JSON_BYTES, lambda n: f"request body over {MAX_JSON_BYTES // 1024} KB")
    if not _json_depth_ok(body, MAX_JSON_DEPTH):
        raise UserError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(400, "the request body must be a JSON object")
    _check_strings(data)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(400, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"this endpoint takes {', '.join(fields)}")
    return data


def _field(data: dict[str, Any], key: str, default: Any = ..., kind: type | tuple[type, ...] | None = None) -> Any:
    if key not in data or data[key] is None:
        if default is ...:
            raise UserError(400, f"missing {key!r} in the request")
        return default
    value = data[key]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise UserError(400, f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def create_app(service: DemoService) -> Starlette:
    """The ASGI app serving ``service`` (see the module docstring for the routes)."""
    static = _static_files()
    limiter: list[anyio.CapacityLimiter] = []  # created inside the event loop, on first use

    async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(1))
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter[0])

    def endpoint(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                result = await handler(request)
            except UserError as exc:
                log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
                return _error(exc.status, exc.message)
            except MissingTaskError as exc:
                log.warning("%s %s -> 409: %s", request.method, request.url.path, exc)
                return _error(409, str(exc))
            except Exception as exc:  # noqa: BLE001 - logged with its traceback; the page gets a message
                log.exception("%s %s failed", request.method, request.url.path)
                return _error(500, f"the server failed on this request ({type(exc).__name__}); "
                                   "the details are in the server log")
            return result if isinstance(result, Response) else JSONResponse(result, headers=SECURITY_HEADERS)

        return wrapped

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in static:
            return _error(404, f"no such file: {name}")
        body, media_type = static[name]
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    async def info(request: Request) -> Any:
        return service.info()  # no model involved: answered at once, even while a model runs

    async def upload(request: Request) -> Any:
        name = unquote(request.headers.get("x-filename", "upload"))
        body = await _read_body(request, service.config.max_upload_bytes, partial(service.too_large, name))
        return await run(service.add_upload, body, name)

    async def classify(request: Request) -> Any:
        d = await _json(request, ("id", "report"))
        return await run(service.classify, _field(d, "id", kind=str), _field(d, "report", None, str))

    async def generate(request: Request) -> Any:
        d = await _json(request, ("id",))
        return await run(service.generate, _field(d, "id", kind=str))

    async def explain(request: Request) -> Any:
        d = await _json(request, ("id", "text", "task"))
        return await run(service.explain, _field(d, "id", kind=str), _field(d, "text", kind=str),
                         _field(d, "task", None, str))

    async def overlay(request: Request) -> Any:
        d = await _json(request, ("id", "text", "word", "layer", "task"))
        return await run(service.overlay, _field(d, "id", kind=str), _field(d, "text", kind=str),
                         _field(d, "word", kind=int), _field(d, "layer", None, int), _field(d, "task", None, str))

    async def answer(request: Request) -> Any:
        d = await _json(request, ("id", "question"))
        return await run(service.answer, _field(d, "id", kind=str), _field(d, "question", kind=str))

    async def similar(request: Request) -> Any:
        d = await _json(request, ("id", "k"))
        return await run(service.similar, _field(d, "id", kind=str), _field(d, "k", 5, int))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        Route("/static/{name}", page, methods=["GET"]),
        Route("/api/info", endpoint(info), methods=["GET"]),
        Route("/api/upload", endpoint(upload), methods=["POST"]),
        Route("/api/classify", endpoint(classify), methods=["POST"]),
        Route("/api/generate", endpoint(generate), methods=["POST"]),
        Route("/api/explain", endpoint(explain), methods=["POST"]),
        Route("/api/overlay", endpoint(overlay), methods=["POST"]),
        Route("/api/answer", endpoint(answer), methods=["POST"]),
        Route("/api/similar", endpoint(similar), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(service: DemoService, host: str = "127.0.0.1", port: int = 7860, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (Ctrl+C); the uploads are deleted at the end."""
    import uvicorn

    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
    finally:
        service.close()
