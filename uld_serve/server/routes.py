"""Routes added to vLLM's server through its `vllm.endpoint_plugins` hook: /v1/models with
each forget set's manifest summary, and the admin routes of the forget-set registry.

An admin change stands only once its audit line is written: when the line cannot be written
(a full disk), the change is undone and the client gets 507, as completions do."""
import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..core.errors import UldError
from .asgi import error_body
from .middleware import key_id_of
from .registry import summary
from .sync import follow_registry, load_into_engine, unload_from_engine

router = APIRouter()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status)


def _card(name: str, parent, details: dict) -> dict:
    return {"id": name, "object": "model", "owned_by": "uld-serve", "parent": parent, "uld": details}


@router.get("/v1/models")
async def list_models(request: Request):
    state = request.app.state.uld
    cards = [_card(state.target_name, None, {"kind": "target", "path": str(state.config.target_dir),
                                             "fingerprint": state.config.target_fingerprint[:12],
                                             "enforced": state.enforced.as_dict() if state.enforced else None})]
    cards += [_card(name, state.target_name, summary(fs)) for name, fs in state.config.forget_sets.items()]
    return {"object": "list", "data": cards}


@router.get("/admin/forget-sets")
async def list_forget_sets(request: Request):
    return {name: summary(fs) for name, fs in request.app.state.uld.config.forget_sets.items()}


@router.post("/admin/forget-sets")
async def add_forget_set(request: Request):
    """Body {"name": ..., "path": ...}: validate, load into the engine, persist."""
    state = request.app.state.uld
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, 'the body must be {"name": ..., "path": ...}')
    async with state.changes:
        return await _add(request, state, body.get("name"), body.get("path"))


async def _add(request: Request, state, name, path):
    if name in state.config.forget_sets:
        return _error(409, f"forget set {name!r} is already registered; remove it first")
    try:
        fs = state.registry.validate(name, path)
    except UldError as e:
        return _error(400, str(e))
    failure = await load_into_engine(request.app.state, fs)
    if failure:
        return _error(400, f"the engine could not load {fs.path}: {failure}")
    try:
        state.registry.add(fs)
    except OSError as e:
        await unload_from_engine(request.app.state, fs.name)
        return _error(507, f"the registry {state.registry.path} could not be written ({e.strerror}); nothing was added")
    if not _audited(state, request, "add", fs.name, 201, str(fs.path)):
        try:
            state.registry.remove(fs.name)
        except OSError as e:
            return _error(507, f"{_unaudited(state)}, and the registry could not be restored ({e.strerror}): {fs.name!r} stays added")
        await unload_from_engine(request.app.state, fs.name)
        return _error(507, f"{_unaudited(state)}; nothing was added")
    return JSONResponse(_card(fs.name, state.target_name, summary(fs)), status_code=201)


@router.delete("/admin/forget-sets/{name}")
async def remove_forget_set(name: str, request: Request):
    state = request.app.state.uld
    async with state.changes:
        return await _remove(request, state, name)


async def _remove(request: Request, state, name: str):
    if name not in state.config.forget_sets:
        return _error(404, f"unknown forget set {name!r}; known forget sets: {', '.join(state.config.forget_sets) or 'none'}")
    if state.enforced is not None and state.enforced.forget_set == name:
        return _error(409, f"forget set {name!r} is enforced on this server; restart it without --enforce to remove it")
    fs = state.config.forget_sets[name]
    try:
        state.registry.remove(name)
    except OSError as e:
        return _error(507, f"the registry {state.registry.path} could not be written ({e.strerror}); nothing was removed")
    if not _audited(state, request, "remove", name, 200):
        try:
            state.registry.add(fs)
        except OSError as e:
            await unload_from_engine(request.app.state, name)
            return _error(507, f"{_unaudited(state)}, and the registry could not be restored ({e.strerror}): {name!r} is removed")
        return _error(507, f"{_unaudited(state)}; nothing was removed")
    await unload_from_engine(request.app.state, name)
    return {"removed": name}


def _audited(state, request: Request, action: str, name: str, status: int, path=None) -> bool:
    """Write the change's audit line; False when it could not be written."""
    state.audit.admin(key_id=key_id_of(state, request.scope), action=action, name=name, status=status, path=path)
    return state.audit.healthy


def _unaudited(state) -> str:
    return f"the audit trail {state.audit.path} cannot be written"


class UldEndpoints:
    """The `vllm.endpoint_plugins` entry point (allowlisted by `uld serve` via VLLM_PLUGINS)."""

    name = "uld_server"
    required_tasks = None

    def attach_router(self, app) -> None:
        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        uld = getattr(args, "uld", None)
        if uld is None:
            return  # a vLLM server not started by `uld serve`
        state.uld = uld
        _drain_on_shutdown(engine_client, uld)
        for fs in list(uld.config.forget_sets.values()):
            failure = await load_into_engine(state, fs)
            if failure:
                raise UldError(f"the engine could not load forget set {fs.name} ({fs.path}): {failure}")
        if uld.registry_poll:
            state.uld_follower = asyncio.get_running_loop().create_task(follow_registry(state, uld.registry_poll))


def _drain_on_shutdown(engine_client, uld) -> None:
    """vLLM answers SIGTERM by shutting its engine client down, which lets requests in flight
    finish (--shutdown-timeout) but fails new ones with a 500; marking the state as draining
    when that shutdown starts lets the middleware answer them 503 instead."""
    shutdown = engine_client.shutdown

    def draining_shutdown(*args, **kwargs):
        uld.draining = True
        return shutdown(*args, **kwargs)

    engine_client.shutdown = draining_shutdown
