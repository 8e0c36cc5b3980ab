"""The engine's loaded adapters kept in line with the registry.

Replicas behind one Service share one registry file on a volume they all mount. A forget set
added or removed through one replica's admin routes is written there (registry.py); every
replica looks at the file every `--registry-poll` seconds and, when it changed, loads what is
new and unloads what is gone, so all replicas serve the same forget sets without a restart.
The enforced forget set is never unloaded this way.
"""
import asyncio
import logging
import os
from pathlib import Path

from ..core.artifact import load_forget_set
from ..core.errors import UldError
from .registry import read_entries

log = logging.getLogger("uld_serve.sync")


async def load_into_engine(app_state, fs):
    """None when vLLM loaded the forget set's adapter, else its error message."""
    from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

    result = await app_state.openai_serving_models.load_lora_adapter(
        LoadLoRAAdapterRequest(lora_name=fs.name, lora_path=str(fs.path)))
    return None if isinstance(result, str) else result.error.message


async def unload_from_engine(app_state, name: str) -> None:
    from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

    await app_state.openai_serving_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))


async def follow_registry(app_state, interval: float) -> None:
    """Run for the server's life: reconcile whenever the file is replaced (each write is an
    atomic rename, so a new inode or mtime marks a change)."""
    path = app_state.uld.registry.path
    seen = _stamp(path)
    while True:
        await asyncio.sleep(interval)
        stamp = _stamp(path)
        if stamp is None or stamp == seen:
            continue
        seen = stamp
        try:
            async with app_state.uld.changes:
                await reconcile(app_state, read_entries(path))
        except UldError as e:
            log.warning("registry %s not followed: %s", path, e)


async def reconcile(app_state, entries: dict) -> None:
    uld = app_state.uld
    served = uld.config.forget_sets
    kept = uld.enforced.forget_set if uld.enforced else None
    for name, fs in list(served.items()):
        if entries.get(name) != str(fs.path) and name != kept:
            del served[name]
            await unload_from_engine(app_state, name)
            uld.audit.admin(key_id=None, action="follow-remove", name=name, status=200)
    for name, path in entries.items():
        if name in served or name == uld.target_name:
            continue
        try:
            fs = load_forget_set(name, Path(path), uld.config.target_fingerprint)
            uld.config.check_servable(fs)
        except UldError as e:
            log.warning("forget set %s in the registry is not served here: %s", name, e)
            continue
        failure = await load_into_engine(app_state, fs)
        if failure:
            log.warning("forget set %s in the registry is not served here: the engine could not load it: %s", name, failure)
            continue
        served[name] = fs
        uld.audit.admin(key_id=None, action="follow-add", name=name, status=201, path=path)


def _stamp(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
