"""``create_simulator_app``: a stand-in for Instructure's API gateway, on its own app.

Routes, the middleware chain and the state under ``SIMULATOR_STATE``. A test may add
its own routes before the app starts; they sit behind the same bearer check::

    app = create_simulator_app(SimulatorSettings(job_duration=0))
    app.router.add_get("/test/echo", echo)
    client = await aiohttp_client(app)
"""

from __future__ import annotations

from aiohttp import web

from .dap_api import create_job, get_job, get_schema, list_tables, object_urls
from .login import login
from .middleware import MIDDLEWARES
from .settings import SimulatorSettings
from .state import SIMULATOR_STATE, SimulatorState
from .storage import download_object

__all__ = ["create_simulator_app"]


def create_simulator_app(settings: SimulatorSettings | None = None) -> web.Application:
    """A self-contained gateway simulator; run it with ``web.AppRunner`` or a test fixture."""
    app = web.Application(middlewares=MIDDLEWARES)
    app[SIMULATOR_STATE] = SimulatorState(settings or SimulatorSettings())
    # Route names matter: the middleware keys public routes and rate limits on them.
    router = app.router
    router.add_post("/ids/auth/login", login, name="login")
    router.add_get("/dap/query/{namespace}/table", list_tables, name="list_tables")
    router.add_get("/dap/query/{namespace}/table/{table}/schema", get_schema, name="get_schema")
    router.add_post("/dap/query/{namespace}/table/{table}/data", create_job, name="create_job")
    router.add_get("/dap/job/{job_id}", get_job, name="get_job")
    router.add_post("/dap/object/url", object_urls, name="object_urls")
    router.add_get("/objects/{job_id}/{name}", download_object, name="object")
    return app
