"""What one client may ask of the server (`uld serve --max-*` flags), one owner for each limit:
body size (413), max_tokens and n (400), requests in flight (429 with Retry-After) and the
time a request may take (504, or the end of its stream). The middleware applies them."""
from dataclasses import dataclass
from typing import Optional

from ..core.errors import UldError

RETRY_AFTER_S = 1  # what a 429 tells the client to wait: the queue moves within a few decode steps


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 << 20
    max_tokens: Optional[int] = None  # None: up to the context length (vLLM's own default)
    max_n: int = 8
    max_in_flight: Optional[int] = 512  # completion requests running or waiting; None: unbounded
    request_timeout_s: Optional[float] = 600.0

    @classmethod
    def build(cls, max_body_mib: float = 4, max_tokens: Optional[int] = None, max_n: int = 8,
              max_in_flight: Optional[int] = 512, request_timeout_s: Optional[float] = 600.0) -> "Limits":
        """From the command line's units, each checked (0 turns the in-flight bound and the timeout off)."""
        if not max_body_mib > 0:
            raise UldError("--max-body-mib must be positive")
        for flag, value in (("--max-tokens", max_tokens), ("--max-n", max_n)):
            if value is not None and value < 1:
                raise UldError(f"{flag} must be at least 1")
        if max_in_flight is not None and max_in_flight < 0:
            raise UldError("--max-in-flight must be 0 (unbounded) or more")
        if request_timeout_s is not None and not request_timeout_s >= 0:
            raise UldError("--request-timeout must be 0 (none) or more seconds")
        return cls(max_body_bytes=int(max_body_mib * 2**20), max_tokens=max_tokens, max_n=max_n,
                   max_in_flight=max_in_flight or None, request_timeout_s=request_timeout_s or None)

    def apply(self, body: dict) -> None:
        """Refuse a completion body that asks for more than the limits (ValueError, a 400), and
        cap the length of one that names none."""
        n = body.get("n", 1)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n > self.max_n):
            raise ValueError(f"n must be an integer of at most {self.max_n} on this server (uld serve --max-n)")
        if self.max_tokens is None:
            return
        asked = [body[f] for f in ("max_tokens", "max_completion_tokens") if body.get(f) is not None]
        for value in asked:
            if not isinstance(value, int) or isinstance(value, bool) or value > self.max_tokens:
                raise ValueError(f"max_tokens must be an integer of at most {self.max_tokens} on this server "
                                 "(uld serve --max-tokens)")
        if not asked:
            body["max_tokens"] = self.max_tokens

    def too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_body_bytes} bytes (uld serve --max-body-mib)"
