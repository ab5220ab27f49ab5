"""CORS on exactly the routes a publishable key may call from a web page (``PUBLIC_ROUTES``).

A preflight carries no key, so it is answered for any origin: it only tells the browser that
the request may be sent. The request itself carries the key, and :func:`require_origin`
refuses it (403 ``origin_not_allowed``) unless its ``Origin`` is one the key lists, before
anything is done. Responses on those routes say any origin may read them, so a page sees
the refusal's message instead of an opaque network error. No other route sends a CORS
header, so no browser lets a page call or read it with a key.

A request with no ``Origin``, or from the relay's own origin, is not a cross-origin browser
request (a server, curl, the relay's own ``/docs``), and is not checked: the ``Origin`` check
keeps other sites from using a key in their visitors' browsers; a script outside a browser
can send any ``Origin`` it likes, so it is no defence there. A secret key sent from another
origin is refused (403 ``secret_key_in_browser``): it must never be in a page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.auth import AuthKey
from relay.config import Settings
from relay.errors import Forbidden
from relay.urls import normalize_origin

# Path -> the methods a publishable key may call there from a page. Web calls add theirs.
PUBLIC_ROUTES: dict[str, tuple[str, ...]] = {"/v1/calls": ("POST",)}
ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-Id"
EXPOSE_HEADERS = "X-Request-Id, Retry-After"
MAX_AGE_SECONDS = 600  # browsers cap it anyway (Chromium at 2 h)

ORIGIN_NOT_ALLOWED = (
    "This publishable key may not be used from {origin}; add it to the key's allowedOrigins "
    "(create a key with it)."
)
NO_ORIGINS = (
    "This publishable key lists no allowedOrigins, so no web page may use it; create a key "
    "with allowedOrigins including {origin}."
)
SECRET_IN_BROWSER = (
    "A secret key was sent from the web page {origin}: secret keys must never be in a page. "
    "Use a publishable key there, and rotate this secret key."
)


def is_public(method: str, path: str) -> bool:
    """Whether ``method path`` (a route as declared) may be called from a web page."""
    return method in PUBLIC_ROUTES.get(path, ())


def _own_origins(request: web.Request, settings: Settings) -> set[str]:
    own = set()
    for url in (settings.effective_public_url(), f"{request.scheme}://{request.host}"):
        try:
            own.add(normalize_origin(url))
        except ValueError:
            pass  # a Host header no browser would send
    return own


def require_origin(request: web.Request, settings: Settings, key: AuthKey) -> None:
    """Refuse ``key`` on a public route when a page it does not list sent the request."""
    origin = request.headers.get("Origin")
    if origin is None or origin in _own_origins(request, settings):
        return
    if key.allowances is None:
        raise Forbidden(SECRET_IN_BROWSER.format(origin=origin), code="secret_key_in_browser")
    if origin not in key.allowances.origins:
        message = ORIGIN_NOT_ALLOWED if key.allowances.origins else NO_ORIGINS
        raise Forbidden(message.format(origin=origin), code="origin_not_allowed")


async def preflight(request: web.Request) -> web.Response:
    resource = request.match_info.route.resource
    assert resource is not None
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ", ".join(PUBLIC_ROUTES[resource.canonical]),
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
        },
    )


@web.middleware
async def cors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Outermost, so error responses get the headers too."""
    response = await handler(request)
    resource = request.match_info.route.resource
    methods = PUBLIC_ROUTES.get(resource.canonical, ()) if resource is not None else ()
    if methods and request.method in (*methods, "OPTIONS") and not response.prepared:
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = request.headers.get("Origin")
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def install(app: web.Application) -> None:
    """The preflight routes; the app puts :func:`cors_middleware` outermost."""
    for path in PUBLIC_ROUTES:
        app.router.add_route("OPTIONS", path, preflight)
