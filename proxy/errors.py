"""The gateway's one exception tree; each class knows its HTTP status and OpenAI error shape.

    ProxyError                         500 server_error / internal_error
    ├── InvalidRequestError            400 invalid_request
    │   ├── InvalidModelIdError        400 invalid_model_id
    │   ├── ByokKeyNotConfiguredError  400 byok_key_not_configured
    │   ├── StatefulRequestNotAllowedError 400 stateful_request_not_allowed
    │   ├── MethodNotAllowedError      405 method_not_allowed (Allow)
    │   ├── RequestTimeoutError        408 request_timeout
    │   ├── UnsupportedMediaError      415 unsupported_media_type
    │   └── TransferCodingError        501 not_implemented (a Transfer-Encoding other than chunked)
    ├── AuthenticationError            401 invalid_api_key
    │   └── KeyRejectedError           401, with the AuthFailure reason for metrics
    ├── PaymentRequiredError           402 (billing: never retried by the SDKs)
    │   ├── InsufficientQuotaError     402 insufficient_quota
    │   ├── BudgetExceededError        402 budget_exceeded
    │   └── KeyLimitExceededError      402 key_limit_exceeded
    ├── PermissionDeniedError          403
    │   ├── WorkspaceDisabledError     403 workspace_disabled
    │   ├── ByokNotEnabledError        403 byok_not_enabled
    │   └── ByokUpstreamAuthError      403 byok_upstream_auth_failed
    ├── NotFoundError                  404 not_found
    │   └── ModelNotFoundError         404 model_not_found
    ├── ConflictError                  409 conflict
    ├── RequestTooLargeError           413 request_too_large
    ├── RateLimitedError               429 rate_limited (Retry-After)
    │   └── WorkspaceLimitedError      429, with the ShedReason for metrics
    ├── UpstreamError                  502 upstream_error
    │   └── UpstreamStatusError        the upstream's own status and OpenAI error body
    ├── ServiceUnavailableError        503
    │   ├── NoHealthyUpstreamError     503 no_healthy_upstream
    │   └── OverloadedError            503 overloaded (Retry-After), with the ShedReason
    └── UpstreamTimeoutError           504 upstream_timeout

    ConfigError                        not an HTTP error: an invalid config file

Messages are written for the person reading them; they never contain a key or account name.
http.middleware.error_response is the one place an error becomes a JSON response.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.types import AuthFailure, ShedReason


class ProxyError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.to_openai_body())

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequestError(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidModelIdError(InvalidRequestError):
    code = "invalid_model_id"


class ByokKeyNotConfiguredError(InvalidRequestError):
    code = "byok_key_not_configured"


class StatefulRequestNotAllowedError(InvalidRequestError):
    code = "stateful_request_not_allowed"


class MethodNotAllowedError(InvalidRequestError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow  # the Allow header's value

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class RequestTimeoutError(InvalidRequestError):
    status = 408
    code = "request_timeout"


class UnsupportedMediaError(InvalidRequestError):
    status = 415
    code = "unsupported_media_type"


class TransferCodingError(InvalidRequestError):
    status = 501
    code = "not_implemented"


class AuthenticationError(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class KeyRejectedError(AuthenticationError):
    """401 with the reason kept for metrics; the message never contains the key."""

    def __init__(self, reason: AuthFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PaymentRequiredError(ProxyError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class InsufficientQuotaError(PaymentRequiredError):
    code = "insufficient_quota"


class BudgetExceededError(PaymentRequiredError):
    code = "budget_exceeded"


class KeyLimitExceededError(PaymentRequiredError):
    code = "key_limit_exceeded"


class PermissionDeniedError(ProxyError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class WorkspaceDisabledError(PermissionDeniedError):
    code = "workspace_disabled"
    reason = AuthFailure.DISABLED


class ByokNotEnabledError(PermissionDeniedError):
    code = "byok_not_enabled"


class ByokUpstreamAuthError(PermissionDeniedError):
    code = "byok_upstream_auth_failed"


class NotFoundError(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(ProxyError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RequestTooLargeError(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimitedError(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class WorkspaceLimitedError(RateLimitedError):
    def __init__(self, reason: ShedReason, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


class UpstreamError(ProxyError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered an error before any byte reached the client.

    `body` is the upstream's OpenAI-shaped error (already checked and, on scrubbed lanes,
    masked); it is passed on with the upstream's status.
    """

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None,
                 passed_headers: dict[str, str] | None = None) -> None:
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else {}
        super().__init__(str(error.get("message") or "upstream error"), retry_after=retry_after)
        self.status = status
        self.body = body
        self.passed_headers = passed_headers or {}  # upstream headers the client may see (X-Should-Retry, ...)
        if isinstance(error.get("code"), str):
            self.code = error["code"]
        if isinstance(error.get("type"), str):
            self.type = error["type"]

    def to_openai_body(self) -> dict[str, Any]:
        return self.body

    def headers(self) -> dict[str, str]:
        return {**self.passed_headers, **super().headers()}


class ServiceUnavailableError(ProxyError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class NoHealthyUpstreamError(ServiceUnavailableError):
    code = "no_healthy_upstream"


class OverloadedError(ServiceUnavailableError):
    code = "overloaded"

    def __init__(self, reason: ShedReason, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


def auth_failure(exc: BaseException) -> AuthFailure | None:
    """The metric reason of an authentication failure, or None for any other error."""
    if isinstance(exc, KeyRejectedError | WorkspaceDisabledError):
        return exc.reason
    return None


class UpstreamTimeoutError(ProxyError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class ConfigError(Exception):
    """An invalid config file; the message starts with the path of the bad field."""
