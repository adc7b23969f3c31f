"""How `python -m app` runs uvicorn: the same server in one process or in every worker.

- SIGTERM (or SIGINT): /readyz answers 503 at once, requests (new ones too) are served for
  VAE_DRAIN_SECONDS, then the listener closes and requests in flight get up to
  GRACEFUL_SHUTDOWN_S. A second SIGTERM or SIGINT exits at once.
- SIGHUP: the checkpoint at VAE_MODEL_PATH is loaded beside the serving one and takes over
  between batches; a failed load keeps the old one (app.lifecycle).
- A request's headers must arrive within VAE_HEADER_TIMEOUT_S of its first byte (or of
  the connection's opening): uvicorn arms no timer until a first response has been sent.
- VAE_WORKERS > 1: uvicorn's supervisor, with these servers in its workers; it passes
  SIGTERM on, forwards SIGHUP (each worker reloads in place, instead of uvicorn's restart
  of every worker) and turns a second SIGTERM/SIGINT into an immediate exit of all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from socket import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from app.config import Settings
from app.lifecycle import LIFECYCLE_STATE, Lifecycle
from app.logs import configure_logging

logger = logging.getLogger("app.server")
# Requests still running when the listener closes get this long (uvicorn's
# timeout_graceful_shutdown); deploy/kubernetes' terminationGracePeriodSeconds counts on it.
GRACEFUL_SHUTDOWN_S = 10
EXIT_FORCED = 128 + signal.SIGINT  # the shell's code for a process stopped by Ctrl+C


class ServiceConfig(uvicorn.Config):
    """uvicorn's Config plus our timings; pickled into each worker process with it."""

    def __init__(
        self,
        app: str,
        *,
        drain_seconds: float,
        header_timeout_s: float,
        body_timeout_s: float,
        service_log_level: str,
        **kwargs: Any,
    ) -> None:
        self.service_log_level = service_log_level  # uvicorn's __init__ configures logging
        super().__init__(app, **kwargs)
        self.drain_seconds = drain_seconds
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s

    def configure_logging(self) -> None:
        """Also in each worker process (uvicorn calls this there): our JSON lines."""
        super().configure_logging()
        configure_logging(self.service_log_level)
        for name in ("uvicorn.error", "uvicorn"):
            logging.getLogger(name).addFilter(_OneLineStartupFailure())


# By name: importing them would load torch before CpuExecution.tune_process has run.
STARTUP_ERRORS = ("CheckpointError", "DeviceUnavailableError")


class _OneLineStartupFailure(logging.Filter):
    """Our lifespan logs the one-line reason a start-up failed; drop uvicorn's traceback of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Traceback") and any(name in text for name in STARTUP_ERRORS))


class DrainingServer(uvicorn.Server):
    def __init__(self, config: ServiceConfig) -> None:
        super().__init__(config)
        self.drain_seconds = config.drain_seconds
        self.drain_deadline: float | None = None
        self.lifecycle: Lifecycle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task[object]] = set()

    def run(self, sockets: list[socket] | None = None) -> None:
        try:
            super().run(sockets)
        finally:
            if self.force_exit:
                # Not even the batch on the inference thread is waited for (interpreter
                # exit would join that thread).
                logging.shutdown()
                os._exit(EXIT_FORCED)

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets)
        lifecycle = self.lifespan.state.get(LIFECYCLE_STATE)
        self.lifecycle = lifecycle if isinstance(lifecycle, Lifecycle) else None
        self._loop = asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit or self.drain_deadline is not None:
            logger.warning("second %s: exiting at once", signal.Signals(sig).name)
            self._captured_signals.append(sig)
            self.force_exit = self.should_exit = True
            return
        if not self.started or self.drain_seconds <= 0:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        self.drain_deadline = time.monotonic() + self.drain_seconds
        if self.lifecycle is not None:
            self.lifecycle.start_draining()
        logger.info(
            "%s: /readyz answers 503; serving %.1f s more, then closing (send it again to "
            "exit at once)",
            signal.Signals(sig).name,
            self.drain_seconds,
        )

    async def on_tick(self, counter: int) -> bool:
        # main_loop polls this every 0.1 s; uvicorn's shutdown starts once it returns True.
        deadline = self.drain_deadline
        if deadline is not None and not self.should_exit and time.monotonic() >= deadline:
            logger.info("drained: closing the listener, finishing requests in flight")
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(signal.SIGHUP, self.handle_reload)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def handle_reload(self, sig: int, frame: FrameType | None) -> None:
        loop, lifecycle = self._loop, self.lifecycle
        if loop is None or lifecycle is None or self.should_exit:
            logger.warning("SIGHUP while not serving: no reload")
            return
        loop.call_soon_threadsafe(self._start_reload, lifecycle)

    def _start_reload(self, lifecycle: Lifecycle) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(lifecycle.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for headers and a backstop for bodies.

    Headers: from the connection's opening, or from a later request's first byte, until
    its headers are complete. Past it: 408 and close if part of a request came, else close.
    Body: the app answers 408 at VAE_BODY_TIMEOUT_S (app.admission) when it reads it; a
    body still trickling a second later, after a reply that did not read it, is cut off.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, ServiceConfig)
        self.header_timeout_s = config.header_timeout_s
        self.body_backstop_s = config.body_timeout_s + 1.0
        self._timer: asyncio.TimerHandle | None = None
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._request_begun = False
        self._arm(self.body_backstop_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Still working on a request (its body is the app's to time out): no reuse.
            cycle.keep_alive = False
            return
        if self._request_begun:
            self.transport.write(REQUEST_TIMEOUT_REPLY)
        self.transport.close()


_TIMEOUT_BODY = b'{"detail": "request headers did not arrive in time (VAE_HEADER_TIMEOUT_S)"}'
REQUEST_TIMEOUT_REPLY = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
) + _TIMEOUT_BODY


class _Worker(Process):
    """One uvicorn worker process running a DrainingServer (the parent pickles this)."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            assert isinstance(self.config, ServiceConfig)
            self._server = DrainingServer(self.config)
        return self._server


# How long a worker that stopped answering health checks gets to exit on its own.
EXIT_GRACE_S = 5.0


class Supervisor(Multiprocess):
    def __init__(self, config: ServiceConfig, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.startup_failed = False
        # uvicorn handles queued signals between health checks, and not at all while it
        # waits for the workers to finish: a second stop signal must act at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit.is_set():
            self.signal_queue.append(sig)
            return
        logger.warning("second %s: stopping every worker at once", signal.Signals(sig).name)
        self._signal_workers(signal.SIGINT)  # their second signal: they exit at once

    def _signal_workers(self, sig: int) -> None:
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)

    def _new_worker(self) -> Process:
        worker = _Worker(self.config, self.sockets)
        worker.start()
        return worker

    def init_processes(self) -> None:
        self.processes = [self._new_worker() for _ in range(self.processes_num)]

    def handle_hup(self) -> None:
        logger.info("SIGHUP: every worker reloads the checkpoint")
        self._signal_workers(signal.SIGHUP)

    def handle_ttin(self) -> None:
        self.processes_num += 1
        self.processes.append(self._new_worker())

    def keep_subprocess_alive(self) -> None:
        """uvicorn's, starting our workers: a hung worker is killed and replaced, one that
        died before it served stops everything (it would fail the same way again)."""
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            # A worker that stops answering may be on its way out after a failed start-up
            # (its pipe closes before it exits): killed at once, it would read as a crash and
            # be replaced, and the replacement would fail the same way.
            process.process.join(EXIT_GRACE_S)
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error("worker [%s] failed to start, stopping", process.pid)
                self.startup_failed = True
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info("worker [%s] died, starting another", process.pid)
            self.processes[index] = self._new_worker()


def serve(settings: Settings) -> None:
    config = ServiceConfig(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http=TimedHttpProtocol,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        drain_seconds=settings.drain_seconds,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        service_log_level=settings.log_level,
    )
    if config.workers > 1:
        supervisor = Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
        if supervisor.startup_failed:  # as one process would: not a clean exit
            raise SystemExit(STARTUP_FAILURE)
        return
    server = DrainingServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # a SIGINT re-raised after shutting down
        server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
