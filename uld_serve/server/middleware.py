"""ASGI middleware in front of vLLM's OpenAI server.

- Auth (keys.py): with any key configured, every route but /health needs `Authorization: Bearer
  KEY`: 401 without a known key, 403 for a client key on a route beyond the completions and
  /v1/models.
- Completions: the forget set comes from `"model"` (vLLM's LoRA convention: the target's
  name or a forget set's) or from an extra `forget_set` field (null: none), alpha and
  relative_top from extra fields. Bad values get 400, unknown forget sets 404 with the
  known names, malformed JSON 400. The request reaches vLLM with the forget set's LoRA as
  its model and the resolved alpha and filter r in `vllm_xargs` (they become
  SamplingParams.extra_args, read by the ULD logits processor), and with the forget set's
  served repetition penalty when it names none itself.
- Limits (limits.py): bodies over the size limit get 413, n or max_tokens over theirs 400,
  a completion beyond the requests in flight 429 with Retry-After, and one that outlasts the
  request timeout 504 (or, once its stream has started, the end of the stream); cancelling
  it makes vLLM abort the request. Once vLLM starts shutting down (SIGTERM), every route but
  /metrics gets 503 (/health too, so that a load balancer stops sending) while requests in
  flight finish.
- An enforced forget set (enforce.py) is applied to every completion; a request that asks for
  none, another set or a lower alpha gets 400.
- Responses say what was applied: `x-uld-forget-set`, `x-uld-alpha`, `x-uld-relative-top`
  (and `x-uld-repetition-penalty` when one applies) headers, and a `uld` object in
  non-streaming JSON bodies.
- Each completion, served or refused, is one line of the audit trail (audit.py); while the
  trail cannot be written, completions get 507.
"""
import asyncio
import json
import time
import uuid
from typing import Optional

from prometheus_client import Counter

from ..core.errors import UldError
from .audit import ask_for_usage, observed
from .keys import CLIENT, key_id
from .limits import RETRY_AFTER_S

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
CLIENT_PATHS = (*COMPLETION_PATHS, "/v1/models", "/tokenize", "/detokenize", "/version")
UNGUARDED = ("/health",)
ADMIN_READS = ("/metrics",)  # still answered while draining
RETRY_AFTER = [(b"retry-after", str(RETRY_AFTER_S).encode())]
REQUESTS = Counter("uld_requests", "Completion requests by forget set ('none': without one)", ["forget_set"])


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def resolve(body: dict, state) -> tuple:
    """(the body vLLM gets, what is applied: {forget_set, alpha, relative_top, repetition_penalty})."""
    model = body.get("model")
    names = [state.target_name, *state.config.forget_sets]
    explicit = "forget_set" in body or model in state.config.forget_sets
    if "forget_set" in body:
        forget_set = body.pop("forget_set")
        if forget_set is not None and not isinstance(forget_set, str):
            raise ApiError(400, "forget_set must be a forget set's name or null")
        if model not in (None, state.target_name, forget_set):
            raise ApiError(400, f"model {model!r} and forget_set {forget_set!r} disagree; name the target as the model")
    elif model is None or model == state.target_name:
        forget_set = None
    elif model in state.config.forget_sets:
        forget_set = model
    else:
        raise ApiError(404, f"unknown model {model!r}; this server offers {', '.join(names)}")
    alpha, relative_top = body.pop("alpha", None), body.pop("relative_top", None)
    try:
        if state.enforced is not None:
            forget_set = state.enforced.choose(forget_set, explicit)
        applied = state.config.settings(forget_set, alpha, relative_top, body.get("repetition_penalty"))
        if state.enforced is not None:
            state.enforced.check_alpha(applied.alpha)
    except UldError as e:
        raise ApiError(404 if str(e).startswith("unknown forget set") else 400, str(e)) from None
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if applied.forget_set is not None and not state.config.forget_sets[applied.forget_set].is_weight_level:
        refuse_structured_outputs(body)
    xargs = body.get("vllm_xargs") or {}
    if not isinstance(xargs, dict):
        raise ApiError(400, "vllm_xargs must be an object")
    body["vllm_xargs"] = {**xargs, **applied.extra_args()}
    body["model"] = applied.forget_set or state.target_name
    if applied.repetition_penalty is not None:
        body["repetition_penalty"] = applied.repetition_penalty
    return body, applied.as_dict()


STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")


def refuse_structured_outputs(body: dict) -> None:
    """A grammar's token mask would meet logits twice the vocabulary wide (target | assistant)
    before the ULD processor combines them, so a ULD forget set and structured outputs are
    not served together."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    asked = [f for f in STRUCTURED_FIELDS if body.get(f) is not None]
    if kind not in (None, "text"):
        asked.insert(0, f"response_format {kind}")
    if asked:
        raise ApiError(400, f"structured outputs ({', '.join(asked)}) are not served with a ULD forget set; "
                            "send the request without the forget set or without the structured output")


ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
               409: "ConflictError", 413: "RequestTooLargeError", 429: "RateLimitError", 503: "ServiceUnavailableError",
               504: "TimeoutError", 507: "InsufficientStorageError"}


def error_body(status: int, message: str) -> dict:
    """The OpenAI error object, as vLLM's own errors have it."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": None, "code": status}}


async def error_response(send, status: int, message: str, headers=()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def bearer_token(scope) -> Optional[str]:
    headers = dict(scope.get("headers") or [])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token if scheme.lower() == "bearer" else None


def refusal(state, path: str, scope) -> Optional[tuple]:
    """(status, message) when the request's key may not call `path`, else None."""
    if state is None or state.keys.open or path in UNGUARDED:
        return None
    role = state.keys.role(bearer_token(scope))
    if role is None:
        return 401, "missing or wrong API key (Authorization: Bearer KEY)"
    if role == CLIENT and path not in CLIENT_PATHS:
        return 403, "this route needs an admin key; client keys reach the completions and /v1/models"
    return None


class UldMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        state = getattr(scope["app"].state, "uld", None)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if state is None:
            return await self.app(scope, receive, send)
        if scope.get("method") == "POST" and path in COMPLETION_PATHS:
            return await self.completion(state, path, scope, receive, send)
        refused = self.refused(state, path, scope)
        if refused:
            return await error_response(send, *refused)
        return await self.app(scope, receive, send)

    @staticmethod
    def refused(state, path: str, scope) -> Optional[tuple]:
        """(status, message, headers) for what every route checks first: key, drain, body size."""
        refused = refusal(state, path, scope)
        if refused:
            return (*refused, ())
        if state.draining and path not in ADMIN_READS:
            return 503, "this server is shutting down; retry on another replica", RETRY_AFTER
        if declared_length(scope) > state.limits.max_body_bytes:
            return 413, state.limits.too_large(), ()
        return None

    async def completion(self, state, path: str, scope, receive, send) -> None:
        """One completion request, through the checks and limits to vLLM, recorded in the audit trail."""
        started, request_id = time.monotonic(), request_id_of(scope)
        scope = with_header(scope, b"x-request-id", request_id.encode())  # vLLM takes it as its request id
        seen = {"status": None, "usage": None, "output": []}
        body, asked, applied = {}, None, {"forget_set": None, "alpha": None, "relative_top": None, "repetition_penalty": None}
        admitted = False
        try:
            refused = self.refused(state, path, scope)
            limits = state.limits
            if not refused and not state.audit.healthy:
                refused = (507, f"the audit trail {state.audit.path} cannot be written; requests are refused until it can", ())
            if not refused and limits.max_in_flight is not None and state.in_flight >= limits.max_in_flight:
                refused = (429, f"this server has {limits.max_in_flight} requests in flight; retry shortly", RETRY_AFTER)
            if not refused:
                state.in_flight += 1  # the slot is taken before the first await, so concurrent arrivals see it
                admitted = True
                try:
                    body = json.loads(await read_body(receive, limits))
                    if not isinstance(body, dict):
                        raise ValueError("the body must be a JSON object")
                    asked = body.get("model")
                    body, applied = resolve(body, state)
                    limits.apply(body)
                except ApiError as e:
                    refused = (e.status, str(e), ())
                except json.JSONDecodeError as e:
                    refused = (400, f"the request body is not valid JSON: {e}", ())
                except ValueError as e:
                    refused = (400, str(e), ())
            if refused:
                seen["status"] = refused[0]
                return await error_response(send, *refused)
            REQUESTS.labels(forget_set=applied["forget_set"] or "none").inc()
            strip_usage = ask_for_usage(body)
            seen["status"] = await within(limits.request_timeout_s, self.app, scope, replay(json.dumps(body).encode(), receive),
                                          lambda sent: annotated(observed(sent, seen, strip_usage), applied, request_id), send)
        finally:
            if admitted:
                state.in_flight -= 1
            state.audit.completion(
                request_id=request_id, key_id=key_id_of(state, scope), route=path, model=asked,
                applied=applied, status=seen["status"] or 499, usage=seen["usage"], seconds=time.monotonic() - started,
                prompt=body.get("messages", body.get("prompt")), output="".join(seen["output"]) or None)


def request_id_of(scope) -> str:
    given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
    return given[:128] if given else uuid.uuid4().hex


def with_header(scope, name: bytes, value: bytes):
    return {**scope, "headers": [(k, v) for k, v in scope.get("headers") or [] if k != name] + [(name, value)]}


def key_id_of(state, scope) -> Optional[str]:
    token = bearer_token(scope)
    return key_id(token) if token and not state.keys.open else None


async def within(timeout_s, app, scope, receive, wrap, send) -> int:
    """Run the app on one request for at most timeout_s: past it, the app is cancelled (vLLM
    aborts the request) and the client gets 504, or, mid-stream, the end of the stream.
    Returns the response's status (504 for a request cut short)."""
    progress = {"status": None, "done": False}

    async def tracked(message):
        if message["type"] == "http.response.start":
            progress["status"] = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            progress["done"] = True
        await send(message)

    try:
        await asyncio.wait_for(app(scope, receive, wrap(tracked)), timeout_s)
    except asyncio.TimeoutError:
        if progress["status"] is None:
            await error_response(send, 504, f"the request took longer than this server's {timeout_s:g} s (uld serve --request-timeout)")
        elif not progress["done"]:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 504
    return progress["status"]


def declared_length(scope) -> int:
    value = dict(scope.get("headers") or []).get(b"content-length", b"0")
    return int(value) if value.isdigit() else 0


async def read_body(receive, limits) -> bytes:
    """The whole body, refused with 413 once it passes the limit (a chunked body declares no length)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limits.max_body_bytes:
            raise ApiError(413, limits.too_large())
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """The rewritten body, then the client's own messages (its disconnect ends a stream)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def annotated(send, applied: dict, request_id: str):
    """Add the applied settings (and the request id) to the response headers, and the settings
    to the body of a JSON answer."""
    headers = [(b"x-request-id", request_id.encode()), (b"x-uld-forget-set", (applied["forget_set"] or "none").encode()),
               (b"x-uld-alpha", repr(applied["alpha"]).encode()),
               (b"x-uld-relative-top", repr(applied["relative_top"]).encode())]
    if applied["repetition_penalty"] is not None:
        headers.append((b"x-uld-repetition-penalty", repr(applied["repetition_penalty"]).encode()))
    start, chunks = None, []

    async def send_annotated(message):
        nonlocal start
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
            content_type = dict(message["headers"]).get(b"content-type", b"")
            if message["status"] == 200 and content_type.startswith(b"application/json"):
                start = message  # hold it: the body grows
                return
            return await send(message)
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = json.loads(b"".join(chunks))
        body["uld"] = applied
        data = json.dumps(body).encode()
        await send({**start, "headers": [(k, v) for k, v in start["headers"] if k != b"content-length"]
                    + [(b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return send_annotated
