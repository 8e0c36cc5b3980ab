"""Who may call what. Client keys reach the completions, `/v1/models` and the tokenizer
routes; admin keys reach everything (the forget-set registry, `/metrics`, vLLM's own admin
routes). With no key at all the server is open (loopback demos); `/health` is always open.
Keys come from flags, environment variables or files and are never logged; a request's key is
compared with every configured key in constant time."""
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..core.errors import UldError

CLIENT, ADMIN = "client", "admin"
PLACEHOLDER = "REPLACE_ME"  # what the shipped Kubernetes Secret holds until an operator sets keys


@dataclass(frozen=True)
class Keys:
    client: tuple = ()
    admin: tuple = ()

    @property
    def open(self) -> bool:
        return not (self.client or self.admin)

    def role(self, token: Optional[str]) -> Optional[str]:
        """ADMIN, CLIENT or None; every key is compared, so the time does not depend on which matched."""
        if not token:
            return None
        given = token.encode()
        admin = any([hmac.compare_digest(given, k.encode()) for k in self.admin])
        client = any([hmac.compare_digest(given, k.encode()) for k in self.client])
        return ADMIN if admin else CLIENT if client else None


def key_id(token: str) -> str:
    """What logs may say about a key: a short hash of it, never the key."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def read_key_file(path: Path) -> list:
    """One key per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UldError(f"key file {path} does not exist")
    keys = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise UldError(f"key file {path} holds no keys")
    return keys


def load_keys(client: Iterable[str] = (), admin: Iterable[str] = (), client_file: Optional[Path] = None,
              admin_file: Optional[Path] = None) -> Keys:
    client = [k for k in client if k] + (read_key_file(client_file) if client_file else [])
    admin = [k for k in admin if k] + (read_key_file(admin_file) if admin_file else [])
    if set(client) & set(admin):
        raise UldError("a key is both a client key and an admin key; give each role its own keys")
    if any(PLACEHOLDER in k for k in client + admin):
        raise UldError(f"a key is still the placeholder {PLACEHOLDER} of deploy/k8s's Secret; put real keys there")
    return Keys(tuple(client), tuple(admin))
