"""The web application behind ``skdigits serve``: a Starlette app.

Four routes and nothing else: the page (``/``), its two local assets
(``/static/app.js``, ``/static/style.css``), the model's description
(``GET /api/model``) and a prediction (``POST /api/predict``, the image as
the raw request body).  The raw body rather than a multipart form because
Starlette spools a form's files to a temporary file past 1 MB, and nothing a
visitor sends is to be written to disk; the byte limit is enforced as the
body streams in.

Every response carries a Content-Security-Policy that lets the page load
and contact only its own origin, so the browser itself refuses any outside
request (no CDN, fonts or analytics exist to request anyway).
"""

import logging
from functools import partial
from importlib import resources

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..data.images import MAX_IMAGE_PIXELS
from .predictor import DEFAULT_MAX_BYTES, ImageRejected, too_many_bytes_message

__all__ = ["create_app"]

logger = logging.getLogger("skdigits.serve")

_ASSETS = {  # URL path -> (file in static/, media type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}

#: Only this origin, for everything: scripts, styles, images, fetch().
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

#: Predictions computed at once: the machine's cores are the limit anyway,
#: and each one may hold a decoded picture of up to MAX_IMAGE_PIXELS.
MAX_CONCURRENT_PREDICTIONS = 2


def _read_assets():
    folder = resources.files(__package__) / "static"
    return {path: (folder.joinpath(name).read_bytes(), media)
            for path, (name, media) in _ASSETS.items()}


class _TooLarge(Exception):
    pass


async def _read_body(request, max_bytes):
    """The request body, refused as soon as it exceeds `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _TooLarge(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge(None)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(message, status):
    return JSONResponse({"error": message}, status_code=status, headers=_SECURITY_HEADERS)


def create_app(predictor, *, max_bytes=DEFAULT_MAX_BYTES, max_pixels=MAX_IMAGE_PIXELS,
               allowed_hosts=None):
    """The Starlette application serving `predictor`.

    Parameters
    ----------
    predictor : DigitPredictor
        The loaded model.
    max_bytes : int, default=DEFAULT_MAX_BYTES
        Largest upload accepted; larger bodies are answered 413.
    max_pixels : int, default=MAX_IMAGE_PIXELS
        Largest picture (width x height) decoded; larger ones are answered 413.
    allowed_hosts : list of str or None, default=None
        Host names the server answers to; None answers to any.

    Returns
    -------
    app : starlette.applications.Starlette
    """
    assets = _read_assets()
    description = predictor.describe()
    description["limits"] = {"max_bytes": max_bytes, "max_pixels": max_pixels}
    limiter = anyio.CapacityLimiter(MAX_CONCURRENT_PREDICTIONS)

    async def asset(request):
        body, media = assets[request.url.path]
        return Response(body, media_type=media, headers=_SECURITY_HEADERS)

    async def model(request):
        return JSONResponse(description, headers=_SECURITY_HEADERS)

    async def predict(request):
        try:
            data = await _read_body(request, max_bytes)
        except _TooLarge as exc:
            return _error(too_many_bytes_message(exc.args[0], max_bytes), 413)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            # Decoding and the model run in a worker thread, at most
            # MAX_CONCURRENT_PREDICTIONS at once, so the server keeps answering.
            answer = await anyio.to_thread.run_sync(
                partial(predictor.predict_bytes, data, max_bytes=max_bytes,
                        max_pixels=max_pixels), limiter=limiter)
        except ImageRejected as exc:
            return _error(str(exc), exc.status)
        return JSONResponse(answer, headers=_SECURITY_HEADERS)

    async def server_error(request, exc):
        # The visitor gets one line; the traceback goes to the server's log.
        logger.error("error while answering %s %s", request.method, request.url.path,
                     exc_info=exc)
        return _error(f"the server failed to answer ({type(exc).__name__}); "
                      "see the server's log", 500)

    routes = [Route(path, asset, methods=["GET"]) for path in assets]
    routes += [Route("/api/model", model, methods=["GET"]),
               Route("/api/predict", predict, methods=["POST"])]
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={Exception: server_error})

