"""What the middleware and the routes share: created by `uld serve` and carried to vLLM's
app state in the server's argument namespace (`args.uld`)."""
import asyncio
from dataclasses import asdict, dataclass, field
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
    registry_poll: float = 5.0  # seconds between looks at the (possibly shared) registry file; 0: never
    in_flight: int = 0  # completion requests the middleware has passed on and not yet answered
    draining: bool = False  # set when vLLM starts shutting down (SIGTERM): new requests get 503
    # held by each admin change and each registry reconcile, so that neither acts on a view of
    # the served sets that the other is changing across the awaits of loading an adapter
    changes: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self) -> dict:
        """What `uld serve --check` prints: the settings as resolved, keys only counted."""
        return {"target": str(self.config.target_dir), "served_model_name": self.target_name, "dtype": self.dtype,
                "forget_sets": {name: str(fs.path) for name, fs in self.config.forget_sets.items()},
                "enforced": self.enforced.as_dict() if self.enforced else None, "registry": str(self.registry.path),
                "registry_poll": self.registry_poll, "forget_set_roots": [str(r) for r in self.registry.roots],
                "client_keys": len(self.keys.client), "admin_keys": len(self.keys.admin),
                "audit_log": str(self.audit.path) if self.audit.path else None, "limits": asdict(self.limits)}
