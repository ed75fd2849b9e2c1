"""Operations: ``GET /metrics`` (Prometheus) and ``GET|PUT /admin/routing`` (challenger weight and mode,
changed without a restart)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ml_platform.serving.schemas import RoutingUpdate
from ml_platform.serving.server import ModelServer


def router(server: ModelServer) -> APIRouter:
    routes = APIRouter()

    @routes.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @routes.get("/admin/routing")
    async def get_routing():
        return server.routing_state()

    @routes.put("/admin/routing")
    async def put_routing(update: RoutingUpdate):
        server.set_routing(challenger_weight=update.challenger_weight, mode=update.mode, sticky=update.sticky)
        return server.routing_state()

    return routes
