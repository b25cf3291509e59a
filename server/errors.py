"""OpenAI-style error bodies, and the handlers that turn every failure into one."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}
# The openai clients (Python, Node) read this header before the status: "false" means
# do not retry, whatever the status.
NO_RETRY = {"x-should-retry": "false"}
RETRY_AFTER_SECONDS = 1  # what a 429 or 503 tells a client to wait


def _first_line(error: BaseException, default: str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else default


class APIError(Exception):
    """A request that cannot be served, with the status and body the client will get."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def as_api_error(error: BaseException) -> APIError:
    """Any failure of a request as what its client is told, kept apart by whose fault it is.

    The client's (its input: 4xx), the engine's (503, ``engine_error``) or this server's own
    bug (500, ``internal_error``). The last two are logged with their traceback.
    """
    from server import vllm_compat as v

    if isinstance(error, APIError):
        return error
    if isinstance(error, v.GracefulHTTPError):  # vLLM's own admission (a full queue: 503)
        status = int(error.http_status)
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        return APIError(status, error.message, code="engine_busy", headers=retry)
    if isinstance(error, v.VLLMNotFoundError):
        return APIError(404, _first_line(error, "not found"), code="not_found")
    if isinstance(error, v.VLLMClientError | ValueError):  # vLLM refused the request's values
        return APIError(400, _first_line(error, "bad request"), getattr(error, "parameter", None))
    if isinstance(error, v.VLLMServerError):
        logger.error("the engine failed", exc_info=error)
        return APIError(503, "the engine failed while serving this request", code="engine_error")
    logger.error("unexpected error while serving a request", exc_info=error)
    return APIError(500, "internal server error", code="internal_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None):
    error_type = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status, error.message, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


_NOT_FIELDS = {"body", "str", "int", "float", "bool", "list", "dict", "none"}


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    errors = error.errors()
    # This server's own checks (lone surrogates, ...) say more than a union's other branches.
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    # Union members and validator names appear in pydantic's location: keep the field path.
    location = [
        str(part)
        for part in first.get("loc", ())
        if isinstance(part, int) or (str(part).isidentifier() and part not in _NOT_FIELDS)
    ]
    param = ".".join(location) or None
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if first.get("type") == "missing" and param:
        return f"'{param}' is required", param
    return (f"'{param}': {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return JSONResponse(error_body(400, message, param), status_code=400)

    from server.vllm_compat import VLLMClientError

    @app.exception_handler(VLLMClientError)
    async def client_error(_: Request, error: VLLMClientError) -> JSONResponse:
        """vLLM's request models refuse some values in their own validators (a Responses
        ``prompt`` template): the client's 4xx, handled here so nothing logs a traceback."""
        return error_response(as_api_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(error.status_code, str(error.detail)),
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        return error_response(as_api_error(error))
