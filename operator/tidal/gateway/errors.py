"""Errors in OpenAI's shape, so clients raise the exception they expect (openai.AuthenticationError for
401, PermissionDeniedError 403, NotFoundError 404, RateLimitError 429, InternalServerError 5xx):

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}

and, for KServe v2 requests (Triton's /v2/ paths), in that protocol's shape: {"error": "..."}.
"""

from __future__ import annotations

from aiohttp import web

GATEWAY_ERROR = web.ResponseKey("tidal_error", str)  # set on the errors the gateway makes itself


def openai_error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None) -> web.Response:
    out = dict(headers or {})
    if retry_after is not None:
        out["Retry-After"] = str(retry_after)
    response = web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}},
                                 status=status, headers=out or None)
    response[GATEWAY_ERROR] = message  # made by the gateway, not passed through from an engine
    return response


def in_kserve_shape(response: web.StreamResponse) -> web.StreamResponse:
    """A gateway error as the KServe v2 protocol shapes errors, {"error": "<message>"}: for /v2/ requests,
    whose clients (tritonclient) read `error` as a string. Engine answers pass through untouched."""
    message = response.get(GATEWAY_ERROR) if isinstance(response, web.Response) else None
    if message is None:
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after",) or k.lower().startswith("x-")}
    return web.json_response({"error": message}, status=response.status, headers=headers or None)


def missing_key() -> web.Response:
    return openai_error(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; keys are "
                             "Secrets labelled tidal.dev/api-key=true in the gateway's namespace.",
                        "invalid_request_error", "missing_api_key")


def wrong_key() -> web.Response:
    return openai_error(401, "Incorrect API key provided (unknown or revoked).", "invalid_request_error",
                        "invalid_api_key")


def not_permitted(model: str) -> web.Response:
    return openai_error(403, f"This API key may not use the model '{model}'.", "invalid_request_error",
                        "model_not_permitted", "model")


def unknown_model(model: str) -> web.Response:
    return openai_error(404, f"The model '{model}' does not exist: no InferenceService serves it (GET /v1/models "
                             "lists the models this key may use).", "invalid_request_error", "model_not_found", "model")


def rate_limited(which: str, limit: str, retry_after: int, headers: dict[str, str]) -> web.Response:
    return openai_error(429, f"Rate limit reached: this key may make {limit} {which} per minute. Try again in "
                             f"{retry_after} s.", which, "rate_limit_exceeded", retry_after=retry_after,
                        headers=headers)


def bad_request(message: str, param: str | None = None) -> web.Response:
    return openai_error(400, message, "invalid_request_error", "invalid_request", param)


def gateway_error(status: int, reason: str, message: str, retry_after: int | None = None) -> web.Response:
    """An error about the gateway's own state (holding, waking, replicas failing), in OpenAI's shape;
    `reason` becomes the code a client can act on (for example "service_waking")."""
    code = "".join("_" + c.lower() if c.isupper() else c for c in reason).lstrip("_")
    type_ = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    return openai_error(status, message, type_, code, retry_after=retry_after)
