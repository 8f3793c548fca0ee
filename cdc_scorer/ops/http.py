"""The operations port: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Served by the daemon's own event loop, so ``/healthz`` answering proves the loop is alive (a
blocked loop times the health check out). ``/readyz`` answers 503 with the reasons while this
process is not the leader, not streaming, or lagging beyond the configured bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdc_scorer.core.errors import FatalError
from cdc_scorer.core.spec import HttpSpec
from cdc_scorer.ops.metrics import Telemetry


class OpsServer:
    def __init__(
        self, spec: HttpSpec, telemetry: Telemetry, not_ready: Callable[[], list[str]]
    ) -> None:
        self._spec = spec
        self._telemetry = telemetry
        self._not_ready = not_ready
        self._runner: web.AppRunner | None = None
        self.port = spec.port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._spec.host, self._spec.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise FatalError(
                f"cannot listen on {self._spec.host}:{self._spec.port} for /metrics: "
                f"{exc.strerror} — set [http] port to a free port (0 turns the server off)"
            ) from exc

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._telemetry.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = self._not_ready()
        body = json.dumps({"ready": not reasons, "reasons": reasons}) + "\n"
        return web.Response(
            status=503 if reasons else 200, text=body, content_type="application/json"
        )
