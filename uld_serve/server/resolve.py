"""What a completion is served with: its forget set (from `"model"`, vLLM's LoRA convention,
or an extra `forget_set` field), alpha and relative_top (extra fields), checked against the
enforced forget set, and the body vLLM gets: the forget set's LoRA as its model, alpha and r in
`vllm_xargs` (SamplingParams.extra_args, read by the ULD logits processor), the forget set's
served repetition and frequency penalties where the request names none. Bad values raise ApiError (400, or 404
for an unknown forget set)."""
from ..core.errors import UldError
from ..core.settings import SERVED_PENALTIES
from .asgi import ApiError


def resolve(body: dict, state) -> tuple:
    """(the body vLLM gets, what is applied: {forget_set, alpha, relative_top, repetition_penalty, frequency_penalty})."""
    model = body.get("model")
    names = [state.target_name, *state.config.forget_sets]
    explicit = "forget_set" in body or model in state.config.forget_sets
    if "forget_set" in body:
        forget_set = body.pop("forget_set")
        if forget_set is not None and not isinstance(forget_set, str):
            raise ApiError(400, "forget_set must be a forget set's name or null")
        if model not in (None, state.target_name, forget_set):
            raise ApiError(400, f"model {model!r} and forget_set {forget_set!r} disagree; name the target as the model")
    elif model is None or model == state.target_name:
        forget_set = None
    elif model in state.config.forget_sets:
        forget_set = model
    else:
        raise ApiError(404, f"unknown model {model!r}; this server offers {', '.join(names)}")
    alpha, relative_top = body.pop("alpha", None), body.pop("relative_top", None)
    try:
        if state.enforced is not None:
            forget_set = state.enforced.choose(forget_set, explicit)
        applied = state.config.settings(forget_set, alpha, relative_top, body.get("repetition_penalty"),
                                        body.get("frequency_penalty"))
        if state.enforced is not None:
            state.enforced.check_alpha(applied.alpha)
    except UldError as e:
        raise ApiError(404 if str(e).startswith("unknown forget set") else 400, str(e)) from None
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if applied.forget_set is not None and not state.config.forget_sets[applied.forget_set].is_weight_level:
        refuse_structured_outputs(body)
    xargs = body.get("vllm_xargs") or {}
    if not isinstance(xargs, dict):
        raise ApiError(400, "vllm_xargs must be an object")
    body["vllm_xargs"] = {**xargs, **applied.extra_args()}
    body["model"] = applied.forget_set or state.target_name
    for key in SERVED_PENALTIES:
        if getattr(applied, key) is not None:
            body[key] = getattr(applied, key)
    return body, applied.as_dict()


STRUCTURED_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")


def refuse_structured_outputs(body: dict) -> None:
    """A grammar's token mask would meet logits twice the vocabulary wide (target | assistant)
    before the ULD processor combines them, so a ULD forget set and structured outputs are
    not served together."""
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else response_format
    asked = [f for f in STRUCTURED_FIELDS if body.get(f) is not None]
    if kind not in (None, "text"):
        asked.insert(0, f"response_format {kind}")
    if asked:
        raise ApiError(400, f"structured outputs ({', '.join(asked)}) are not served with a ULD forget set; "
                            "send the request without the forget set or without the structured output")
