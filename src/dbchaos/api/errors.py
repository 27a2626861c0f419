"""The one place where errors become HTTP answers.

Every error answer has the shape ``{"detail": str, "code": str, "field": str | None}``
(plus extra keys such as ``"fault"``). HTTP status codes live here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dbchaos import errors

_log = logging.getLogger("dbchaos.api")

_STATUS: list[tuple[type[errors.DbChaosError], int]] = [
    (errors.InvalidInput, 422),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.CapacityReached, 429),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.TargetUnavailable, 502),
]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


def status_for(exc: errors.DbChaosError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _sendable(text: str | None) -> str | None:
    """``text`` as UTF-8 can carry it: a message that quotes input with a lone surrogate (JSON
    allows ``"\\udc80"``) must not make the error answer itself fail."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(detail: str, code: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"detail": _sendable(detail), "code": code, "field": _sendable(field), **extra}


def error_response(status: int, detail: str, code: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(detail, code, field, **extra), status_code=status)


def _field_path(loc: Any) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or None


def _validation_message(err: dict[str, Any]) -> str:
    field = _field_path(err.get("loc", ()))
    msg = str(err.get("msg", "is invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    if err.get("type") == "missing":
        return f"{field} is required" if field else "a required value is missing"
    return f"{field}: {msg}" if field else msg


async def _dbchaos_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.DbChaosError)
    return error_response(status_for(exc), exc.message, exc.code, exc.field, **exc.extra)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = list(exc.errors())
    first = errs[0] if errs else {"msg": "the request is invalid", "loc": ()}
    field = None if first.get("type") == "json_invalid" else _field_path(first.get("loc", ()))
    return error_response(422, _validation_message(first), "invalid_input", field)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        detail = "no such route or object"
        if isinstance(exc.detail, str) and exc.detail != "Not Found":
            detail = exc.detail
    elif exc.status_code == 405:
        detail = "this method is not allowed on this route"
    else:
        detail = str(exc.detail)
    return JSONResponse(error_body(detail, code), status_code=exc.status_code, headers=exc.headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    _log.exception("unexpected error", exc_info=exc)
    return error_response(500, "dbchaos hit an internal error; see its log", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.DbChaosError, _dbchaos_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
