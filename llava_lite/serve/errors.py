"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}


class APIError(Exception):
    """A request the server refuses or cannot answer; becomes a JSON error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 / 405, in the same shape."""
    status = getattr(exc, "status_code", 500)
    return APIError(status, getattr(exc, "detail", "error")).response()


async def server_error_handler(_: Request, exc: Exception) -> JSONResponse:
    return APIError(500, f"internal server error: {type(exc).__name__}").response()
