"""`uld generate`, `uld serve`, `uld demo`: serving."""
import json
from pathlib import Path
from typing import List, Optional

import typer

from ..core.devices import DEVICE_HELP
from ..core.errors import UldError
from .app import DTYPE, TARGET, app, parse_forget_sets, refuse_existing

FORGET_SETS = typer.Option([], help="NAME=ADAPTER_DIR, repeatable")
API_KEY = typer.Option([], envvar="ULD_API_KEY", help="a client key (completions, /v1/models), repeatable; with no key "
                       "at all the server is open")
API_KEYS_FILE = typer.Option(None, help="client keys, one per line")
ADMIN_KEY = typer.Option([], envvar="ULD_ADMIN_KEY", help="an admin key (also the registry routes and /metrics), repeatable")
ADMIN_KEYS_FILE = typer.Option(None, help="admin keys, one per line")


@app.command()
def generate(
    target: str = TARGET, forget_set: List[str] = FORGET_SETS,
    input: Path = typer.Option(..., "--input", help="JSONL: one request per line"),
    output: Path = typer.Option(..., help="JSONL written in input order, atomically"),
    engine: str = typer.Option("vllm", help="vllm or reference (plain PyTorch)"),
    dtype: str = DTYPE, max_model_len: int = 2048, force: bool = False,
    device: str = typer.Option("auto", help=f"the reference engine's device: {DEVICE_HELP}"),
):
    """Generate for a JSONL of requests, each choosing its forget set (or none) and alpha."""
    from ..generate import generate_file

    refuse_existing(output, force)
    count = generate_file(target, parse_forget_sets(forget_set), input, output, engine=engine, dtype=dtype, device=device,
                          max_model_len=max_model_len)
    print(f"wrote {count} lines to {output}")


@app.command(context_settings={"auto_envvar_prefix": "ULD_SERVE"})
def serve(
    target: str = TARGET,
    forget_set: List[str] = typer.Option([], help="NAME=ADAPTER_DIR, repeatable; joins the persisted registry"),
    host: str = "127.0.0.1", port: int = 8000, api_key: List[str] = API_KEY, api_keys_file: Optional[Path] = API_KEYS_FILE,
    admin_key: List[str] = ADMIN_KEY, admin_keys_file: Optional[Path] = ADMIN_KEYS_FILE,
    forget_set_root: List[Path] = typer.Option([], help="a folder that forget sets added while serving must lie in "
                                               "(repeatable; default $ULD_HOME/forget-sets)"),
    registry: Optional[Path] = typer.Option(None, help="registry file (default: per target, under $ULD_HOME/serve)"),
    served_model_name: Optional[str] = typer.Option(None, help="the target's model name (default: its directory name)"),
    dtype: str = DTYPE, max_model_len: int = 2048,
    max_loras: int = typer.Option(4, help="distinct forget sets in one batch"),
    max_lora_rank: int = typer.Option(32, help="the largest LoRA rank a forget set may have"),
    weight_level: bool = typer.Option(False, help="accept weight-level forget sets (puts LoRA on the target's layers)"),
    sparse_head: bool = typer.Option(False, help="the assistant's LM head only where the filter can keep a token: faster "
                                     "for a few requests at a time; relative_top is then limited to the forget sets' values"),
    max_body_mib: float = typer.Option(4.0, help="larger request bodies get 413"),
    max_tokens: Optional[int] = typer.Option(None, help="the most tokens a completion may ask for (also its default); "
                                             "default: up to the context length"),
    max_n: int = typer.Option(8, help="the most choices (n) a completion may ask for"),
    max_in_flight: int = typer.Option(512, help="completion requests running or waiting; beyond it 429 with Retry-After "
                                      "(0: unbounded)"),
    request_timeout: float = typer.Option(600.0, help="seconds a completion may take; past it 504, or the end of its stream (0: none)"),
    enforce: Optional[str] = typer.Option(None, help="NAME or NAME=MIN_ALPHA: serve every completion with this forget set; "
                                          "requests may not turn it off, pick another or go below the floor (default: its alpha)"),
    audit_log: str = typer.Option("", help="the audit trail, one JSON line per completion and admin change "
                                  "(default $ULD_HOME/serve/audit.jsonl; 'off': none)"),
    audit_content: bool = typer.Option(False, help="also record prompts and outputs in the audit trail"),
    audit_max_mib: float = typer.Option(100.0, help="the audit file's size before it is rotated"),
    audit_backups: int = typer.Option(10, help="rotated audit files kept"),
    drain_timeout: int = typer.Option(30, help="on SIGTERM, seconds in-flight requests get to finish (vLLM's --shutdown-timeout)"),
    registry_poll: float = typer.Option(5.0, help="seconds between looks at the registry file for forget sets that other "
                                        "replicas sharing it added or removed (0: never)"),
    tensor_parallel_size: int = typer.Option(1, help="GPUs the model is split over (vLLM's tensor parallelism)"),
    pipeline_parallel_size: int = typer.Option(1, help="pipeline stages (vLLM's); only 1 is served with forget sets"),
    distributed_executor_backend: Optional[str] = typer.Option(None, help="vLLM's: mp (one node), ray (several nodes), "
                                                               "uni or external_launcher (default: vLLM's choice)"),
    check: bool = typer.Option(False, "--check", help="check the settings and print them as JSON, without starting vLLM"),
):
    """OpenAI-compatible server (vLLM's own) where each request picks its forget set and alpha.
    Every option can also be set as an environment variable: ULD_SERVE_ and its name in
    capitals (ULD_SERVE_TARGET, ULD_SERVE_TENSOR_PARALLEL_SIZE; repeatable ones separated by spaces)."""
    from ..server.keys import load_keys
    from ..server.audit import AuditLog
    from ..server.launch import default_audit_log, parallel_args, prepare, serve as run
    from ..server.limits import Limits

    if max_loras < 1:
        raise UldError("--max-loras must be at least 1")
    keys = load_keys(api_key, admin_key, api_keys_file, admin_keys_file)
    if drain_timeout < 0:
        raise UldError("--drain-timeout must be 0 (abort in-flight requests) or more seconds")
    limits = Limits.build(max_body_mib, max_tokens, max_n, max_in_flight, request_timeout)
    parallel = parallel_args(tensor_parallel_size, pipeline_parallel_size, distributed_executor_backend)
    if registry_poll < 0:
        raise UldError("--registry-poll must be 0 (never) or more seconds")
    if not audit_max_mib > 0 or audit_backups < 0:
        raise UldError("--audit-max-mib must be positive and --audit-backups at least 0")
    audit = AuditLog(None if audit_log == "off" else Path(audit_log or default_audit_log()), audit_max_mib, audit_backups,
                     audit_content, open_file=not check)
    state = prepare(target, parse_forget_sets(forget_set), registry_path=registry, served_name=served_model_name,
                    keys=keys, forget_set_roots=forget_set_root, weight_level=weight_level, max_loras=max_loras,
                    max_lora_rank=max_lora_rank, sparse_head=sparse_head, dtype=dtype, limits=limits,
                    enforce=enforce, audit=audit, registry_poll=registry_poll,
                    persist=not check)
    if check:
        print(json.dumps({**state.describe(), "host": host, "port": port, "max_model_len": max_model_len,
                          "vllm_args": parallel}, indent=2))
        return
    enforced = f", enforcing {state.enforced.forget_set}" if state.enforced else ""
    print(f"serving {state.target_name} with forget sets {', '.join(state.config.forget_sets) or 'none'}{enforced} "
          f"on http://{host}:{port} (registry {state.registry.path}, audit {state.audit.path or 'off'})", flush=True)
    run(state, host=host, port=port, max_model_len=max_model_len, extra_args=["--shutdown-timeout", str(drain_timeout), *parallel])


@app.command()
def demo(
    port: int = 8000, host: str = "127.0.0.1", api_key: List[str] = API_KEY,
    prepare_only: bool = typer.Option(False, help="train and cache the demo models, then exit"),
):
    """Serve SmolLM2 taught four fictitious authors, with a forget set for two of them."""
    from ..demo import run_demo
    from ..server.keys import load_keys

    run_demo(host=host, port=port, keys=load_keys(api_key), prepare_only=prepare_only)
