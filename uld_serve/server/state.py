"""What the middleware and the routes share: created by `uld serve` and carried to vLLM's
app state in the server's argument namespace (`args.uld`)."""
from dataclasses import dataclass
from typing import Optional

from ..engine.config import EngineConfig
from .registry import Registry


@dataclass
class ServerState:
    config: EngineConfig
    registry: Registry
    target_name: str
    api_key: Optional[str] = None
    dtype: str = "fp32"  # api.DTYPES
