"""The proxy's HTTP control API: routes, bearer-token and cookie authentication.

The routes are listed in `dataflow.proxy.server`'s docstring; the proxy serves them from its
`ProxyServer` (its store, its engines' figures and history).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger

from dataflow.proxy.database import StateError
from dataflow.proxy.records import UnknownPipelineError
from dataflow.specs import SpecError

if TYPE_CHECKING:
    from dataflow.proxy.server import ProxyServer

__all__ = ["PAGE", "TOKEN_COOKIE", "UNAUTHORIZED", "ControlApi"]

UNAUTHORIZED = "unauthorized: missing or wrong bearer token"
PAGE = Path(__file__).with_name("page")
TOKEN_COOKIE = "dataflow_token"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


class ControlApi:
    """The control API of one proxy.

    Args:
        proxy: the proxy whose store and engines it answers for.
        token: the bearer token (None: no authentication).
    """

    def __init__(self, proxy: ProxyServer, token: bytes | None) -> None:
        self._proxy = proxy
        self._token = token

    def app(self) -> web.Application:
        """The aiohttp application of the routes."""
        return self._app()

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token):
            return True
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        return (
            request.method in ("GET", "HEAD")
            and bool(cookie)
            and hmac.compare_digest(cookie.encode(), self._token)
        )

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._token is None or request.path == "/health":
            return await handler(request)
        if request.path == "/" and "token" in request.query:
            given = request.query["token"].encode()
            if hmac.compare_digest(given, self._token):
                response = web.Response(status=302, headers={"Location": "/"})
                response.set_cookie(
                    TOKEN_COOKIE, given.decode(), httponly=True, samesite="Strict", path="/"
                )
                return response
        if not self._authorized(request):
            logger.warning(
                "control API: {} {} from {} refused: {}",
                request.method,
                request.path,
                request.remote,
                UNAUTHORIZED,
            )
            if request.path == "/":
                return web.Response(
                    text=f"{UNAUTHORIZED}: open /?token=<token> once (it sets a cookie)\n",
                    status=401,
                )
            return web.json_response(
                {"error": UNAUTHORIZED},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="dataflow-proxy"'},
            )
        return await handler(request)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/health", self._http_health)
        app.router.add_get("/pipelines", self._http_list)
        app.router.add_post("/pipelines", self._http_load)
        app.router.add_get("/pipelines/{name}", self._http_get)
        app.router.add_delete("/pipelines/{name}", self._http_unload)
        app.router.add_get("/subscribers", self._http_subscribers)
        app.router.add_get("/pipelines/{name}/describe", self._http_describe)
        app.router.add_get("/", self._http_page)
        app.router.add_static("/page/", PAGE)
        return app

    async def _http_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-store"})

    async def _http_describe(self, request: web.Request) -> web.Response:
        try:
            return _json(await self._proxy.describe(request.match_info["name"]))
        except UnknownPipelineError as e:
            return _json({"error": str(e)}, 404)

    async def _http_list(self, request: web.Request) -> web.Response:
        return _json(
            [
                {
                    **record.as_dict(),
                    "trouble": self._proxy.history.trouble(record.name, record.uid),
                }
                for record in self._proxy.store.records()
            ]
        )

    async def _http_get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        record = self._proxy.store.get(name)
        if record is None:
            return _json({"error": str(UnknownPipelineError(name))}, 404)
        return _json({**record.as_dict(), "trouble": self._proxy.history.trouble(name, record.uid)})

    async def _http_load(self, request: web.Request) -> web.Response:
        source = request.query.get("source") or "request"
        try:
            text = await request.text()
            result = self._proxy.load_text(text, source)
        except SpecError as e:
            logger.warning("load refused: {}", e)
            return _json({"error": str(e)}, 400)
        except StateError as e:
            logger.error("load not sent: {}", e)
            return _json({"error": str(e)}, 500)
        except UnicodeDecodeError:
            return _json({"error": f"{source}: body is not UTF-8 text"}, 400)
        body = {
            "outcome": result.outcome,
            "pipeline": result.record.as_dict(),
            "warning": result.warning,
        }
        return _json(body, 201 if result.outcome in ("created", "updated") else 200)

    async def _http_unload(self, request: web.Request) -> web.Response:
        try:
            result = self._proxy.unload(request.match_info["name"])
        except UnknownPipelineError as e:
            return _json({"error": str(e)}, 404)
        return _json({"outcome": result.outcome, "pipeline": result.record.as_dict()})

    async def _http_subscribers(self, request: web.Request) -> web.Response:
        return _json({"subscribers": list(self._proxy.store.subscribers)})

    async def _http_health(self, request: web.Request) -> web.Response:
        return _json({"status": "UP"})
