"""What the middleware and the routes share: created by `uld serve` and carried to vLLM's
app state in the server's argument namespace (`args.uld`)."""
from dataclasses import dataclass

from ..engine.config import EngineConfig
from .keys import Keys
from .registry import Registry


@dataclass
class ServerState:
    config: EngineConfig
    registry: Registry
    target_name: str
    keys: Keys = Keys()
    dtype: str = "fp32"  # api.DTYPES
    max_body_bytes: int = 4 << 20  # larger request bodies get 413
