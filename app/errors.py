"""Every error leaves as JSON with a `detail` string that tells the caller what to fix.

Any layer (body readers, image decoding, jobs, the engine) raises a ClientError subclass;
one handler turns it into its status code. Overload and shutdown come from the batcher.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.batching import BatcherClosedError, QueueFullError
from app.schemas import ErrorResponse

logger = logging.getLogger("app.errors")
RETRY_AFTER_SECONDS = "1"


class ClientError(ValueError):
    """A request the service cannot serve as sent; the message says what to change."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class InvalidInputError(ClientError):
    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class UnsupportedMediaTypeError(ClientError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE


class PayloadTooLargeError(ClientError):
    status_code = status.HTTP_413_CONTENT_TOO_LARGE


# The error replies of a route that reads a body and runs the model, for its `responses=`.
MODEL_ROUTE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse}
    for code in (
        status.HTTP_413_CONTENT_TOO_LARGE,
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        status.HTTP_503_SERVICE_UNAVAILABLE,
    )
}


def describe_validation_errors(errors: Any) -> str:
    """pydantic's error list -> "query.n: Input should be less than or equal to 256; ..." """
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"detail": describe_validation_errors(exc.errors())},
        )

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})

    @app.exception_handler(QueueFullError)
    async def _overloaded(_: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": f"the service is at capacity ({exc}); retry shortly"},
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(BatcherClosedError)
    async def _not_serving(_: Request, exc: BatcherClosedError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": str(exc)},
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        logger.exception("unhandled error in request %s", request_id)
        return JSONResponse(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            content={"detail": f"internal error; quote request ID {request_id} when reporting it"},
        )
