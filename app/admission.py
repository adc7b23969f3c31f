"""Who gets in and for how long: a concurrency limit that never refuses the probes, a
deadline for receiving a request body, and `Connection: close` on replies while draining.

uvicorn's own limit_concurrency counts connections and answers 503 to everything above it,
/healthz included: 800 slow connections made Kubernetes restart a healthy pod. Here the
limit counts requests the app is working on, and probes and metrics always pass.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import status
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.lifecycle import Lifecycle

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_SECONDS = "1"


class BodyTimeoutError(Exception):
    """The client did not send its body within VAE_BODY_TIMEOUT_S."""


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        lifecycle: Lifecycle,
        body_timeout_s: float,
        limit_concurrency: int | None = None,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.body_timeout_s = body_timeout_s
        self.limit_concurrency = limit_concurrency
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exempt = scope["path"] in EXEMPT_PATHS
        if (
            not exempt
            and self.limit_concurrency is not None
            and self.in_progress >= self.limit_concurrency
        ):
            await send_json(
                send,
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"{self.in_progress} requests are in progress (VAE_LIMIT_CONCURRENCY); "
                "retry shortly",
                [(b"retry-after", RETRY_AFTER_SECONDS.encode())],
            )
            return
        started = False

        async def send_marked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.lifecycle.draining:
                    # Clients reconnect (through the load balancer, to another replica)
                    # instead of reusing a connection that is about to close.
                    MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        self.in_progress += not exempt
        try:
            await self.app(scope, self._deadline_receive(receive), send_marked)
        except BodyTimeoutError:
            if started:
                raise
            await send_json(
                send,
                status.HTTP_408_REQUEST_TIMEOUT,
                f"the request body did not arrive within {self.body_timeout_s:g} s "
                "(VAE_BODY_TIMEOUT_S); send it faster or smaller",
                # the rest of the body may still be on its way: not worth reading
                [(b"connection", b"close")],
            )
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful shutdown ends,
            # and would answer them 500: this is overload, not a fault.
            if not started:
                await send_json(
                    send,
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    "the service shut down before this request was done; retry it",
                    [(b"retry-after", RETRY_AFTER_SECONDS.encode()), (b"connection", b"close")],
                )
            raise
        finally:
            self.in_progress -= not exempt

    def _deadline_receive(self, receive: Receive) -> Receive:
        """receive() that raises BodyTimeoutError once the body has taken body_timeout_s
        in all (a per-chunk timeout would let one byte every few seconds go on forever)."""
        deadline = time.monotonic() + self.body_timeout_s
        body_done = False

        async def receive_by_deadline() -> Message:
            nonlocal body_done
            if body_done:  # later calls wait for a disconnect: no deadline for that
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_by_deadline


async def send_json(
    send: Send,
    status_code: int,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A whole JSON reply, sent without the app."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
