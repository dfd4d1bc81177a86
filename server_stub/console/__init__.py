"""The security team's web console, served at `/` beside the API (`/api/v1`).

Server-rendered pages (Jinja2 templates and SVG charts in this package, no script, nothing
loaded from elsewhere), named users with roles (reader, analyst, admin) signed in by session
cookie, CSRF tokens on every form. `mount_console(app)` is all the application needs to call.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from server_stub.console.auth import ConsoleDenied, viewer_of


def mount_console(app: FastAPI) -> None:
    from server_stub.console.pages import _page, router

    static = resources.files("server_stub.console") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="console-static")
    app.include_router(router)

    @app.exception_handler(ConsoleDenied)
    async def denied(request: Request, exc: ConsoleDenied) -> Response:
        if exc.signin:
            return RedirectResponse("/signin", status_code=303)
        viewer = viewer_of(request.app.state.ctx, request)
        response: HTMLResponse = _page(
            request, viewer, "denied.html", status=exc.status, message=exc.message, code=exc.status
        )
        return response


__all__ = ["mount_console"]
