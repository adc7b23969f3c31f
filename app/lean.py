"""Plain Starlette routes in front of the busiest FastAPI routes.

The hot model routes already read their query, services and body by hand (`endpoint(request)
-> Response`), so FastAPI's request handler (dependency solving, an exit stack per request,
response-model checks) does nothing for them but cost event-loop time. A Starlette `Route`
with the same path, methods and endpoint, inserted before FastAPI's routes, serves them
without it; the FastAPI route stays behind it, unreached, for the OpenAPI schema and /docs.
Middleware, exception handlers and the route template in metrics are the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from app.security import bearer_scheme, header_scheme, require_api_key

Endpoint = Callable[[Request], Awaitable[Response]]


def add_lean_routes(
    app: FastAPI, routers: Sequence[APIRouter], paths: Sequence[str], protected: bool
) -> None:
    """Serve the routes of `routers` at `paths` (already included in `app`) through plain
    Starlette routes. `protected`: they were included with the API-key dependency, which
    the lean route then checks itself."""
    lean = [_lean_route(_api_route(routers, path), protected) for path in paths]
    app.router.routes[:0] = lean  # matched first: the FastAPI routes only document


def _api_route(routers: Sequence[APIRouter], path: str) -> APIRoute:
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path == path:
                return route
    raise LookupError(f"no FastAPI route at {path}")


def _lean_route(route: APIRoute, protected: bool) -> Route:
    dependant = route.dependant
    # Only an endpoint that takes the Request and nothing else can skip FastAPI: any
    # parameter or dependency of its own would go unresolved.
    # (The router's dependencies are added at include_router, not on the router's routes.)
    if (
        dependant.request_param_name is None
        or dependant.dependencies
        or dependant.query_params
        or dependant.header_params
        or dependant.body_params
        or dependant.path_params
    ):
        raise TypeError(f"{route.path}: the endpoint must take only the Request to run lean")
    endpoint: Endpoint = route.endpoint
    served = _with_api_key(endpoint) if protected else endpoint
    return LeanRoute(route.path, served, methods=sorted(route.methods or ()), name=route.name)


class LeanRoute(Route):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            # FastAPI's router names the route in the scope only for its own routes; the
            # metrics and access log read the route template from there.
            child_scope["route"] = self
        return match, child_scope


def _with_api_key(endpoint: Endpoint) -> Endpoint:
    async def checked(request: Request) -> Response:
        # The same functions FastAPI resolves for the router dependency, in the same order
        # (before the endpoint reads anything): the same 401.
        await require_api_key(request, await bearer_scheme(request), await header_scheme(request))
        return await endpoint(request)

    return checked
