"""ASGI middleware in front of vLLM's OpenAI server.

- Auth (keys.py): with any key configured, every route but /health needs `Authorization: Bearer
  KEY`: 401 without a known key, 403 for a client key on a route beyond the completions and
  /v1/models.
- Completions: resolve.py decides the forget set, alpha, filter r and repetition penalty and
  rewrites the body for vLLM; bad values get 400, unknown forget sets 404 with the known
  names, malformed JSON 400.
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
import json
import time
import uuid
from dataclasses import fields
from typing import Optional

from prometheus_client import Counter

from ..core.settings import SERVED_PENALTIES, Settings
from .asgi import ApiError, bearer_token, declared_length, error_response, read_body, replay, with_header, within
from .audit import ask_for_usage, observed
from .keys import CLIENT, key_id
from .limits import RETRY_AFTER_S
from .resolve import resolve

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
CLIENT_PATHS = (*COMPLETION_PATHS, "/v1/models", "/tokenize", "/detokenize", "/version")
UNGUARDED = ("/health",)
ADMIN_READS = ("/metrics",)  # still answered while draining
RETRY_AFTER = [(b"retry-after", str(RETRY_AFTER_S).encode())]
REQUESTS = Counter("uld_requests", "Completion requests by forget set ('none': without one)", ["forget_set"])


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
        body, asked, applied = {}, None, dict.fromkeys(f.name for f in fields(Settings))  # nothing applied yet
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
                    body = json.loads(await read_body(receive, limits.max_body_bytes, limits.too_large()))
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


def key_id_of(state, scope) -> Optional[str]:
    token = bearer_token(scope)
    return key_id(token) if token and not state.keys.open else None


def annotated(send, applied: dict, request_id: str):
    """Add the applied settings (and the request id) to the response headers, and the settings
    to the body of a JSON answer."""
    headers = [(b"x-request-id", request_id.encode()), (b"x-uld-forget-set", (applied["forget_set"] or "none").encode()),
               (b"x-uld-alpha", repr(applied["alpha"]).encode()),
               (b"x-uld-relative-top", repr(applied["relative_top"]).encode())]
    for key in SERVED_PENALTIES:
        if applied[key] is not None:
            headers.append((f"x-uld-{key.replace('_', '-')}".encode(), repr(applied[key]).encode()))
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
