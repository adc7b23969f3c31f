"""Every error leaves as JSON with a `detail` string that tells the caller what to fix.

Any layer (body readers, image decoding, jobs, the engine) raises a ClientError subclass;
one handler turns it into its status code. Overload and shutdown come from the batcher.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.batching import BatcherClosedError, QueueFullError
from app.schemas import ErrorResponse

RETRY_AFTER_SECONDS = "1"
# Error replies stay small whatever the body held: a few problems are enough to fix the
# request, and a reply that grows with the input (one message per bad pixel) is a way to
# make the service spend memory and bandwidth (issue 12: a 1 MB body got a 28 MB reply).
MAX_LISTED_PROBLEMS = 5
MAX_LOCATION_CHARS = 80
MAX_DETAIL_CHARS = 2000


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
    """pydantic's error list -> "query.n: Input should be less than or equal to 256; ...",
    the first MAX_LISTED_PROBLEMS of them and how many more there are."""
    errors = list(errors)
    parts = []
    for error in errors[:MAX_LISTED_PROBLEMS]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
        location = bounded(location, MAX_LOCATION_CHARS)  # keys come from the caller
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    if len(errors) > MAX_LISTED_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_LISTED_PROBLEMS} more problems")
    return "; ".join(parts) or "invalid request"


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` cut to `limit` characters, saying so: messages may quote what the caller sent."""
    return text if len(text) <= limit else f"{text[: limit - 15]}... (truncated)"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"detail": bounded(describe_validation_errors(exc.errors()))},
        )

    @app.exception_handler(ClientError)
    async def _client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": bounded(str(exc))})

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

    # Unexpected exceptions are answered by RequestContextMiddleware, which sees them
    # before Starlette's outermost error middleware and so can add the request ID.
