"""The one HTTP middleware that applies the access check (access_check.py) to every HTTP server of every process
(gateway REST, agent proxy REST, trainer status API; all aiohttp): 401 without a credential, 403 naming the
missing role, before the handler runs; an admitted handler runs with its caller set (caller.serving).

A request that matches no route is left to aiohttp (404, 405): it reaches no handler.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from modelplane.auth.access_check import AccessCheck, Credentials, Refusal
from modelplane.auth.access_table import HTTP_ROUTES, Resource, http_route_key
from modelplane.auth.caller import serving
from modelplane.auth.certificates import sans_from_peercert
from modelplane.auth.grpc_access import bearer_token

__all__ = ["protect", "route_key"]


def route_key(request: web.Request) -> str | None:
    """The access table's key of the route ``request`` matched; None when it matched none."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or request.match_info.http_exception is not None:
        return None
    method = "*" if route.method == "*" else request.method
    return http_route_key(method, resource.canonical)


def _middleware(check: AccessCheck) -> Middleware:
    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = route_key(request)
        if key is None:
            return await handler(request)
        peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
        credentials = Credentials(
            peer=request.remote or "",
            bearer=bearer_token(request.headers.get("Authorization")),
            certificate_sans=sans_from_peercert(peercert),
        )
        verdict = await check.admit(key, HTTP_ROUTES.get(key), credentials, Resource)
        if isinstance(verdict, Refusal):
            if verdict.unauthenticated:
                return web.json_response({"error": verdict.message}, status=401, headers={"WWW-Authenticate": "Bearer"})
            return web.json_response({"error": verdict.message}, status=403)
        with serving(verdict):
            return await handler(request)

    return access


def protect(app: web.Application, check: AccessCheck) -> web.Application:
    """Put the access check in front of every route of ``app`` (before it is started)."""
    app.middlewares.insert(0, _middleware(check))
    return app
