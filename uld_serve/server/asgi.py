"""Plain ASGI plumbing the middleware is built from: the OpenAI error object and its response,
headers, reading a bounded body and replaying a rewritten one, and a time limit around the app.
Nothing here knows about forget sets."""
import asyncio
import json
from typing import Optional


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def with_header(scope, name: bytes, value: bytes):
    return {**scope, "headers": [(k, v) for k, v in scope.get("headers") or [] if k != name] + [(name, value)]}


def declared_length(scope) -> int:
    value = dict(scope.get("headers") or []).get(b"content-length", b"0")
    return int(value) if value.isdigit() else 0


async def read_body(receive, max_bytes: int, too_large: str) -> bytes:
    """The whole body, refused with 413 once it passes max_bytes (a chunked body declares no length)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_bytes:
            raise ApiError(413, too_large)
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
