"""The REST API, mounted at ``/api/v1`` by ``server.web``.

``make_resource(context)`` builds one klein app from the route modules listed in
:data:`ROUTE_MODULES` (each names a ``server.api.routing.Routes`` subclass as
``ROUTES``). Adding a module of routes is one line here; its ``@route``
decorators document it in ``/openapi.json`` at the same time.

Every route requires ``Authorization: Bearer <key>``; errors are JSON (see
``server.api.errors``); time comes from ``context.reactor``.
"""

from __future__ import annotations

import importlib

from server.api.routing import Api

#: Route modules, in mounting order.
ROUTE_MODULES: tuple[str, ...] = (
    "server.api.activities",
    "server.api.events",
    "server.api.computers",
    "server.api.attachments",
    "server.api.types",
    "server.api.openapi",
)
#: Route modules other engineers add (mounted when present): job outputs.
OPTIONAL_ROUTE_MODULES: tuple[str, ...] = ("server.api.outputs",)


def route_classes() -> list[type]:
    classes = [importlib.import_module(name).ROUTES for name in ROUTE_MODULES]
    for name in OPTIONAL_ROUTE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        classes.append(module.ROUTES)
    return classes


def make_api(context) -> Api:
    return Api(context, route_classes())


def make_resource(context):
    """The ``IResource`` serving ``/api/v1`` for ``context``."""
    return make_api(context).resource()
