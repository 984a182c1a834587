"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status the SDKs map to their exception classes (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413, 429 RateLimitError, 5xx InternalServerError)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import JSONResponse

#: the ``type`` of each status, as OpenAI's API names them.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


@dataclass
class ApiError(Exception):
    """A request that fails; :meth:`response` renders it."""

    status: int
    message: str
    code: str
    param: str | None = None
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Cache-Control": "no-store"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="speechpipe"'
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        return JSONResponse(self.body(), self.status, headers=headers)


def unauthorized() -> ApiError:
    return ApiError(
        401, "Incorrect API key provided: this server takes its stream token as the API key.", "invalid_api_key"
    )


def bad_request(message: str, code: str = "invalid_value", param: str | None = None) -> ApiError:
    return ApiError(400, message, code, param)


#: the live protocol's error codes that are the request's fault (400); the rest are the server's.
_CLIENT_CODES = {
    "bad_message",
    "bad_audio",
    "unsupported_language",
    "unsupported_rate",
    "unsupported_channels",
    "stream_too_long",
}


def from_stream_error(message: dict, retry_after_s: float) -> ApiError:
    """The HTTP error of a live stream's ``error`` message."""
    code, text = message.get("code", "error"), message.get("message", "the stream failed")
    if code in ("server_busy", "not_ready", "shutting_down"):
        retry = message.get("retry_after_s", retry_after_s) if code != "shutting_down" else None
        return ApiError(503, text, code, retry_after_s=retry)
    if code in _CLIENT_CODES:
        return ApiError(400, text, code)
    return ApiError(500, text, code)
