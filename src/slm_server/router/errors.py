"""Typed errors of the routing service and the OpenAI error envelope they leave in."""

from __future__ import annotations

import json

from slm_server.balance import Failure, failure_of_status

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _TYPE_BY_STATUS.get(status, "invalid_request_error")


def error_object(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, str | None]:
    """What the OpenAI envelope holds under ``error``: message, type, param, code."""
    return {"message": message, "type": error_type_for(status), "param": param, "code": code}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    """The OpenAI error envelope, ``{"error": {message, type, param, code}}``."""
    return json.dumps({"error": error_object(status, message, param=param, code=code)}).encode()


class RouterError(Exception):
    """An error answered by the router itself (not passed through from a backend)."""

    status = 500
    code: str | None = None
    # A 5xx is logged with each request that gets it, unless its cause is logged once
    # for all of them (an outage).
    log_each: bool = True
    # Set when an upstream failed before any of its answer: the request may be sent to
    # another (see balance.retry); None for every other error.
    failure: Failure | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def body(self) -> bytes:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def error_object(self) -> dict[str, str | None]:
        return error_object(self.status, self.message, param=self.param, code=self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Headers the answer carries besides its content type."""
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(self.retry_after).encode())]


class InvalidRequest(RouterError):
    status = 400
    code = "invalid_request"


class UnsupportedRequestField(InvalidRequest):
    code = "unsupported_field"


class WrongModelType(RouterError):
    status = 400
    code = "model_type_mismatch"


class InvalidApiKey(RouterError):
    """No API key, or one the router does not know."""

    status = 401
    code = "invalid_api_key"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"www-authenticate", b"Bearer")]  # HTTP asks it of a 401


class ModelNotAllowed(RouterError):
    """A valid API key, for a model outside its ``models``."""

    status = 403
    code = "model_not_allowed"


class AdminRequired(RouterError):
    """A valid API key, on an admin endpoint, without ``admin: true``."""

    status = 403
    code = "admin_required"


class ModelNotFound(RouterError):
    status = 404
    code = "model_not_found"


class UnknownResponse(RouterError):
    status = 404
    code = "response_not_found"


class EndpointNotFound(RouterError):
    status = 404
    code = "unknown_endpoint"


class MethodNotAllowed(RouterError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        """``allow``: the methods the endpoint takes, for the ``Allow`` header HTTP requires."""
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [*super().headers(), (b"allow", self.allow.encode())]


class AmbiguousModel(RouterError):
    status = 409
    code = "ambiguous_model"


class BodyStalled(RouterError):
    """The client stopped sending its request body part-way."""

    status = 408
    code = "request_timeout"


class BodyTooLarge(RouterError):
    status = 413
    code = "body_too_large"


class QueueFull(RouterError):
    status = 429
    code = "queue_full"


class InternalError(RouterError):
    """A bug in the router: the client learns only that, the log has the traceback."""

    status = 500
    code = "internal_error"


class BadGateway(RouterError):
    """The backend answered with something that is not HTTP, or broke the connection."""

    status = 502
    code = "backend_error"


class BackendUnavailable(RouterError):
    """The backend is not running or not accepting connections."""

    status = 503
    code = "backend_unavailable"


class BackendTimeout(RouterError):
    status = 504
    code = "backend_timeout"


class TooManyBodies(RouterError):
    """The request bodies already held fill ``router.max_inflight_body_mb``."""

    status = 503
    code = "router_busy"


class ShuttingDown(RouterError):
    status = 503
    code = "shutting_down"


class ResponseStoreUnavailable(RouterError):
    """The shared Responses store (Redis) cannot be reached to look up a conversation."""

    status = 503
    code = "response_store_unavailable"
    log_each = False  # the store says once when it goes and once when it is back


class InsufficientMemory(RouterError):
    """The model can never fit in the memory budget, whatever is stopped."""

    status = 503
    code = "insufficient_memory"


class RoleNotFound(RouterError):
    status = 404
    code = "role_not_found"


class RemoteAnswer(RouterError):
    """A server elsewhere answered an error in no OpenAI form (or a redirect): told in the
    envelope, with the status the router chose for it."""

    code = "backend_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(BackendUnavailable):
    """The connection to an upstream could not be made."""

    failure = Failure.REFUSED


class ConnectTimedOut(Unreachable):
    """The connection to an upstream was not made in time (a machine off, packets dropped)."""

    failure = Failure.CONNECT_TIMEOUT


class ClosedBeforeAnswer(BadGateway):
    """The upstream reset or closed the connection before the router relayed any of its
    answer: before the response head, or while a body read whole was coming in."""

    failure = Failure.RESET


class UpstreamRefusal(RouterError):
    """An upstream answered 502, 503 or 429: another may answer instead. When no other
    can, the client gets ``answer`` (the headers and body it would have got had the
    status been relayed), or, when there is none, this error's envelope."""

    code = "backend_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: int | None = None,
        answer: tuple[list[tuple[bytes, bytes]], bytes] | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.answer = answer
        self.failure = failure_of_status(status) or Failure.UNAVAILABLE
        if status == 429:
            self.code = "rate_limited"
