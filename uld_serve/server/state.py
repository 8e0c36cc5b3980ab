"""What the middleware and the routes share: created by `uld serve` and carried to vLLM's
app state in the server's argument namespace (`args.uld`)."""
from dataclasses import dataclass, field
from typing import Optional

from ..engine.config import EngineConfig
from .audit import AuditLog
from .enforce import Enforced
from .keys import Keys
from .limits import Limits
from .registry import Registry


@dataclass
class ServerState:
    config: EngineConfig
    registry: Registry
    target_name: str
    keys: Keys = Keys()
    dtype: str = "fp32"  # api.DTYPES
    limits: Limits = field(default_factory=Limits)
    enforced: Optional[Enforced] = None  # the forget set every completion is served with
    audit: AuditLog = field(default_factory=lambda: AuditLog(None))
    in_flight: int = 0  # completion requests the middleware has passed on and not yet answered
    draining: bool = False  # set when vLLM starts shutting down (SIGTERM): new requests get 503
