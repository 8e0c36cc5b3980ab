"""Start vLLM's OpenAI server with the ULD wrapper model, middleware and routes."""
import os
from pathlib import Path
from typing import Optional

from ..api import VLLM_DTYPES, check_dtype
from ..engine.config import EngineConfig
from ..engine.llm import eager_requested, engine_environment
from ..core.errors import UldError
from ..core.models import resolve_model, uld_home
from .audit import AuditLog
from .enforce import Enforced
from .keys import Keys
from .limits import Limits
from .registry import Registry, read_entries
from .state import ServerState

PLUGINS = "uld,uld_server"  # our general plugin (the model) and endpoint plugin (the routes)
EXECUTOR_BACKENDS = ("mp", "ray", "uni", "external_launcher")  # vLLM's --distributed-executor-backend


def default_registry(target_dir: Path) -> Path:
    from ..core.models import fingerprint

    return uld_home() / "serve" / f"registry-{fingerprint(target_dir)[:12]}.json"


def default_audit_log() -> Path:
    return uld_home() / "serve" / "audit.jsonl"


def default_forget_set_root() -> Path:
    return uld_home() / "forget-sets"


def parallel_args(tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, backend: Optional[str] = None) -> list:
    """vLLM's own parallelism flags, checked. Pipeline stages are refused: the wrapper model
    runs the assistant's layers beside the target's first layers and needs both halves' last
    hidden states in one place for the logit difference, which vLLM's stage split (SupportsPP)
    does not carry; tensor parallelism splits every layer instead, and Ray spans nodes."""
    if tensor_parallel_size < 1:
        raise UldError("--tensor-parallel-size must be at least 1")
    if pipeline_parallel_size != 1:
        raise UldError("--pipeline-parallel-size must be 1: the logit difference needs the assistant's and the target's "
                       "hidden states on one stage; split the model with --tensor-parallel-size instead (Ray across nodes)")
    if backend is not None and backend not in EXECUTOR_BACKENDS:
        raise UldError(f"--distributed-executor-backend must be one of {', '.join(EXECUTOR_BACKENDS)}, got {backend!r}")
    return (["--tensor-parallel-size", str(tensor_parallel_size)]
            + (["--distributed-executor-backend", backend] if backend else []))


def prepare(target: str, forget_sets: dict, *, registry_path: Optional[Path] = None, served_name: Optional[str] = None,
            keys: Keys = Keys(), forget_set_roots: Optional[list] = None, weight_level: bool = False, max_loras: int = 4,
            max_lora_rank: int = 32, sparse_head: bool = False, dtype: str = "fp32", limits: Limits = Limits(),
            enforce: Optional[str] = None, audit: Optional[AuditLog] = None, registry_poll: float = 5.0,
            persist: bool = True) -> ServerState:
    """Everything `uld serve` decides before vLLM starts, with every check that can fail on
    user input (so a mistake ends before the minutes of engine start-up). forget_set_roots:
    where runtime additions may come from (default: $ULD_HOME/forget-sets). persist: False
    checks only (`uld serve --check`): no registry write, no folder made."""
    dtype = check_dtype(dtype)
    target_dir = resolve_model(target)
    registry_path = Path(registry_path) if registry_path else default_registry(target_dir)
    entries = read_entries(registry_path)
    entries.update(forget_sets)  # command-line sets join (or replace) the persisted ones
    name = served_name or target_dir.name
    if name in entries:
        raise UldError(f"{name!r} names both the target and a forget set; pass --served-model-name")
    config = EngineConfig.build(target_dir, entries, weight_level=weight_level, min_lora_rank=max_lora_rank,
                                max_loras=max_loras, sparse_head=sparse_head)
    enforced = Enforced.build(enforce, config.forget_sets)
    roots = [Path(r) for r in forget_set_roots] if forget_set_roots else [default_forget_set_root()]
    for root in roots:
        if not root.is_dir():
            if forget_set_roots:
                raise UldError(f"forget-set root {root} is not a directory")
            if persist:
                root.mkdir(parents=True, exist_ok=True)
    registry = Registry(registry_path, config, name, roots)
    if persist:
        registry.save()
    return ServerState(config=config, registry=registry, target_name=name, keys=keys, dtype=dtype,
                       limits=limits, enforced=enforced, audit=audit or AuditLog(None), registry_poll=registry_poll)


def serve(state: ServerState, host: str = "127.0.0.1", port: int = 8000, max_model_len: int = 2048,
          extra_args: Optional[list] = None) -> None:
    state.audit.start(state.describe())
    engine_environment()
    os.environ["VLLM_PLUGINS"] = ",".join(filter(None, [os.environ.get("VLLM_PLUGINS"), PLUGINS]))
    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args([
        "--model", str(state.config.target_dir), "--served-model-name", state.target_name,
        "--host", host, "--port", str(port), "--dtype", VLLM_DTYPES[state.dtype], "--max-model-len", str(max_model_len),
        "--middleware", "uld_serve.server.middleware.UldMiddleware", *(extra_args or []),
    ])
    for key, value in state.config.vllm_kwargs().items():
        setattr(args, key, value)
    if eager_requested():
        args.enforce_eager = True
    args.uld = state
    validate_parsed_serve_args(args)
    uvloop.run(run_server(args))
