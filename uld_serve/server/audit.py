"""The audit trail (`uld serve --audit-log FILE`): one JSON line per completion request and per
admin change, appended to a file that Python's RotatingFileHandler rotates by size, and
Prometheus counters and a latency histogram per forget set.

A completion line: time, request id, key id (a hash, never the key), route, model, forget
set, alpha, relative_top, repetition_penalty, frequency_penalty, status, prompt and completion tokens, seconds;
the prompt and the output only with `--audit-content`. The lines say which forget set served which request,
which is what an operator must be able to show after a deletion request. The first line of
each start says what the server serves (its settings, keys only counted); a trail that cannot
take it stops the start. A disk that fills while serving is noticed at the next line: that
request was served unrecorded, the ones after it get 507 until a line can be written again."""
import json
import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Optional

from prometheus_client import Counter, Histogram

from ..core.errors import UldError

WRITE_ERRORS = Counter("uld_audit_write_errors", "Audit lines that could not be written (full disk, ...)")
TOKENS = Counter("uld_tokens", "Tokens of completion requests by forget set ('none': without one)", ["forget_set", "kind"])
LATENCY = Histogram("uld_request_seconds", "Completion request time by forget set", ["forget_set"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))


class _Handler(logging.handlers.RotatingFileHandler):
    """Each line goes to the file with os.write, whole or not at all: a line that does not fit
    on a full disk is cut back out, and nothing waits in a buffer to be written later (a
    buffered stream would write an undone admin change's line once space is free again)."""

    failed = False

    def emit(self, record):
        try:
            if self.shouldRollover(record):
                self.doRollover()
            if self.stream is None:
                self.stream = self._open()
            data, fd, written = (self.format(record) + self.terminator).encode("utf-8"), self.stream.fileno(), 0
            try:
                while written < len(data):
                    written += os.write(fd, data[written:])
            except OSError:
                if written:  # the file ends with the part that fit: cut it back out
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise
        except Exception:
            self.handleError(record)

    def handleError(self, record):  # logging would print a traceback and go on; the audit log fails closed
        self.failed = True


class AuditLog:
    """`healthy` is False after a line could not be written: the middleware then refuses
    completions (507) until a line is written again, so no request is served unrecorded."""

    def __init__(self, path: Optional[Path], max_mib: float = 100, backups: int = 10, content: bool = False,
                 open_file: bool = True):
        """open_file False: only name the file (`uld serve --check` creates nothing)."""
        self.path, self.content = path, content
        self.healthy = True
        self._logger = None
        if path is None or not open_file:
            return
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = _Handler(path, mode="a", maxBytes=int(max_mib * 2**20), backupCount=backups, encoding="utf-8")
        except OSError as e:
            raise UldError(f"cannot open the audit log {path}: {e.strerror}") from None
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger(f"uld_serve.audit.{path}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.handlers = [handler]

    def write(self, record: dict) -> None:
        if self._logger is None:
            return
        handler = self._logger.handlers[0]
        handler.failed = False
        self._logger.info(json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False))
        self.healthy = not handler.failed
        if handler.failed:
            WRITE_ERRORS.inc()

    def completion(self, *, request_id: str, key_id: Optional[str], route: str, model, applied: dict, status: int,
                   usage: Optional[dict], seconds: float, prompt=None, output: Optional[str] = None) -> None:
        """Record one completion request and count it in the per-forget-set metrics."""
        label = applied["forget_set"] or "none"
        LATENCY.labels(forget_set=label).observe(seconds)
        usage = usage or {}
        for kind in ("prompt", "completion"):
            if usage.get(f"{kind}_tokens"):
                TOKENS.labels(forget_set=label, kind=kind).inc(usage[f"{kind}_tokens"])
        record = {"event": "completion", "request_id": request_id, "key_id": key_id, "route": route, "model": model,
                  **applied, "status": status, "prompt_tokens": usage.get("prompt_tokens"),
                  "completion_tokens": usage.get("completion_tokens"), "seconds": round(seconds, 3)}
        if self.content:
            record.update(prompt=prompt, output=output)
        self.write(record)

    def start(self, settings: dict) -> None:
        """The start line (ServerState.describe); UldError when it cannot be written."""
        self.write({"event": "start", **settings})
        if not self.healthy:
            raise UldError(f"the audit trail {self.path} cannot be written; the server does not start without it "
                           "(free the disk, or --audit-log off)")

    def admin(self, *, key_id: Optional[str], action: str, name: str, status: int, path: Optional[str] = None) -> None:
        self.write({"event": "admin", "key_id": key_id, "action": action, "forget_set": name, "path": path, "status": status})


def ask_for_usage(body: dict) -> bool:
    """Make a streaming request's last event carry its token counts (vLLM's stream_options);
    True when the client did not ask for them, so that event is taken out of its stream."""
    if not body.get("stream"):
        return False
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    body["stream_options"] = {**options, "include_usage": True}
    return not options.get("include_usage")


def observed(send, seen: dict, strip_usage: bool):
    """Pass the response on, noting its usage and output text in `seen` (a JSON body whole; a
    stream event by event, holding back at most one incomplete event)."""
    pending = b""

    def note(data: dict) -> bool:
        """Note one JSON payload; False for the usage-only event the client did not ask for."""
        if data.get("usage"):
            seen["usage"] = data["usage"]
        for choice in data.get("choices") or []:
            text = choice.get("text") or (choice.get("message") or choice.get("delta") or {}).get("content")
            if text:
                seen["output"].append(text)
        return not (strip_usage and data.get("usage") and not data.get("choices"))

    async def send_observed(message):
        nonlocal pending
        if message["type"] == "http.response.start":
            seen["stream"] = dict(message.get("headers") or []).get(b"content-type", b"").startswith(b"text/event-stream")
            return await send(message)
        if message["type"] != "http.response.body":
            return await send(message)
        body = message.get("body", b"")
        if not seen.get("stream"):
            if not message.get("more_body"):
                try:
                    note(json.loads(body))
                except (ValueError, AttributeError):
                    pass
            return await send(message)
        events = (pending + body).split(b"\n\n")
        pending = events.pop()
        out = b"".join(event + b"\n\n" for event in events if _keep(event, note))
        if not message.get("more_body"):
            out, pending = out + pending, b""
        return await send({**message, "body": out})

    return send_observed


def _keep(event: bytes, note) -> bool:
    payload = event.removeprefix(b"data: ")
    if payload == event or payload.strip() == b"[DONE]":
        return True
    try:
        return note(json.loads(payload))
    except ValueError:
        return True
