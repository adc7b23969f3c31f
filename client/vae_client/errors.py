from __future__ import annotations

import httpx


class VaeApiError(Exception):
    """The service answered with an error status; `detail` is its message (what to change)."""

    def __init__(self, status_code: int, detail: str, request_id: str | None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id  # quote it when reporting a 500

    @classmethod
    def from_response(cls, response: httpx.Response) -> VaeApiError:
        try:
            detail = str(response.json()["detail"])
        except (ValueError, KeyError, TypeError):
            detail = response.text[:500] or response.reason_phrase
        return cls(response.status_code, detail, response.headers.get("X-Request-ID"))
