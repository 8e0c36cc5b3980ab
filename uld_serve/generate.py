"""`uld generate`: JSONL in, JSONL out, in input order, written atomically and resumable.

Each input line is an object with `prompt` (chat user message), `messages` (a chat) or
`prompt_ids`, and optionally `id`, `forget_set`, `alpha`, `relative_top`, `max_tokens`,
`temperature`, `top_p`, `seed`, `repetition_penalty` and `frequency_penalty` (default: the
forget set's), `presence_penalty` (vLLM's, in [-2, 2]; default 0). Completed
chunks are kept in a hidden partial file beside the output, so an interrupted run resumes;
the output appears only when all lines are done.
"""
import hashlib
import json
from pathlib import Path
from typing import NamedTuple, Optional

from tqdm import tqdm

from .api import SamplingParams, UldLLM, check_backend
from .core.atomic import write_text_atomic
from .core.errors import UldError
from .core.jsonl import read_objects
from .core.settings import OUTPUT_PENALTY_RANGE, check_alpha, check_output_penalty, check_relative_top, check_repetition_penalty
from .core.tofu import SYSTEM_PROMPT

ROLES = ("system", "user", "assistant")
FIELDS = {"id", "prompt", "messages", "prompt_ids", "forget_set", "alpha", "relative_top", "max_tokens", "temperature", "top_p", "seed",
          "repetition_penalty", "frequency_penalty", "presence_penalty"}


def _number(line_no, row, key, default, low=None, high=None, integer=False):
    value = row.get(key, default)
    kinds = (int,) if integer else (int, float)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        raise UldError(f"line {line_no}: {key} must be a{'n integer' if integer else ' number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise UldError(f"line {line_no}: {key} must be in [{low}, {high}], got {value}")
    return value


class Line(NamedTuple):
    line_no: int
    id: object
    prompt_ids: list
    params: SamplingParams
    forget_set: Optional[str]
    alpha: Optional[float]
    relative_top: Optional[float]


def _setting(line_no, row, key, check):
    try:
        return None if row.get(key) is None else check(row[key])
    except UldError as e:
        raise UldError(f"line {line_no}: {e}") from None


def parse_requests(path: Path, tokenizer, known_forget_sets, default_max_tokens=256) -> list:
    """The input's lines as Line tuples; the first bad line ends it with one sentence."""
    requests = []
    for line_no, row in read_objects(path):
        unknown = set(row) - FIELDS
        if unknown:
            raise UldError(f"line {line_no}: unknown field(s) {', '.join(map(repr, sorted(unknown)))}")
        forget_set = row.get("forget_set")
        if forget_set is not None and not isinstance(forget_set, str):
            raise UldError(f"line {line_no}: forget_set must be a forget set's name or null")
        if forget_set is not None and forget_set not in known_forget_sets:
            known = ", ".join(sorted(known_forget_sets)) or "none"
            raise UldError(f"line {line_no}: unknown forget set {forget_set!r}; known forget sets: {known}")
        requests.append(Line(
            line_no=line_no,
            id=row.get("id", len(requests)),
            prompt_ids=_prompt_ids(line_no, row, tokenizer),
            params=SamplingParams(
                max_tokens=_number(line_no, row, "max_tokens", default_max_tokens, 1, None, integer=True),
                temperature=_number(line_no, row, "temperature", 0.0, 0.0, 100.0),
                top_p=_number(line_no, row, "top_p", 1.0, 1e-9, 1.0),
                seed=_number(line_no, row, "seed", 0, 0, None, integer=True),
                repetition_penalty=_setting(line_no, row, "repetition_penalty", check_repetition_penalty),
                frequency_penalty=_setting(line_no, row, "frequency_penalty", check_output_penalty),
                presence_penalty=_number(line_no, row, "presence_penalty", 0.0, *OUTPUT_PENALTY_RANGE)),
            forget_set=forget_set,
            alpha=_setting(line_no, row, "alpha", check_alpha),
            relative_top=_setting(line_no, row, "relative_top", check_relative_top),
        ))
    if not requests:
        raise UldError(f"input file {path} holds no requests")
    return requests


def _prompt_ids(line_no, row, tokenizer) -> list:
    given = [k for k in ("prompt", "messages", "prompt_ids") if k in row]
    if len(given) != 1:
        raise UldError(f"line {line_no}: give exactly one of prompt, messages or prompt_ids")
    if "prompt_ids" in row:
        ids = row["prompt_ids"]
        if not ids or not all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in ids):
            raise UldError(f"line {line_no}: prompt_ids must be a non-empty list of token ids")
        return list(ids)
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise UldError(f"line {line_no}: prompt must be a string")
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["prompt"]}]
    else:
        messages = row["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages)):
            raise UldError(f"line {line_no}: messages must be a non-empty list of {{role, content}} objects "
                           f"(role one of {', '.join(ROLES)}, content a string)")
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # the model's own Jinja template may refuse an order of roles
        raise UldError(f"line {line_no}: the target's chat template refused these messages ({e})") from None
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def generate_file(target, forget_sets: dict, input_path: Path, output_path: Path, engine: str = "vllm", dtype: str = "fp32",
                  device: str = "auto", **engine_kwargs) -> int:
    """`uld generate`: every line of the input checked before any model loads, then generated."""
    from .core.models import load_tokenizer

    dtype = check_backend(engine, dtype, device)
    if engine == "reference":
        engine_kwargs = {}  # vLLM's settings (max_model_len) mean nothing to the reference decoder
    parse_requests(input_path, load_tokenizer(target), forget_sets)
    with UldLLM(target, forget_sets, engine=engine, dtype=dtype, device=device, **engine_kwargs) as llm:
        return run_generate(llm, input_path, output_path)


def run_generate(llm, input_path: Path, output_path: Path, chunk_size: int = 64) -> int:
    """Generate every line of `input_path` with `llm` (an api.UldLLM) into `output_path`."""
    output_path = Path(output_path)
    requests = parse_requests(input_path, llm.tokenizer, llm.forget_sets)
    for r in requests:  # e.g. an r outside a sparse head's range: refused before any work
        try:
            llm.settings(r.forget_set, r.alpha, r.relative_top)
        except UldError as e:
            raise UldError(f"line {r.line_no}: {e}") from None
    digest = hashlib.sha256(Path(input_path).read_bytes()).hexdigest()
    partial = output_path.parent / f".{output_path.name}.partial"
    done = _load_partial(partial, digest)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(requests), initial=len(done), desc="generate", unit="req", dynamic_ncols=True) as bar:
        todo = [i for i in range(len(requests)) if i not in done]
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            lines_in = [requests[i] for i in chunk]
            outputs = llm.generate([{"prompt_token_ids": r.prompt_ids} for r in lines_in], [r.params for r in lines_in],
                                   forget_set=[r.forget_set for r in lines_in], alpha=[r.alpha for r in lines_in],
                                   relative_top=[r.relative_top for r in lines_in], use_tqdm=False)
            lines = []
            for i, out in zip(chunk, outputs):
                done[i] = {"id": requests[i].id, "forget_set": out.uld["forget_set"], "alpha": out.uld["alpha"],
                           "repetition_penalty": out.uld["repetition_penalty"],
                           "frequency_penalty": out.uld["frequency_penalty"], "text": out.outputs[0].text,
                           "token_ids": out.outputs[0].token_ids}
                lines.append(json.dumps({"index": i, **done[i]}))
            with open(partial, "a") as f:
                if f.tell() == 0:
                    f.write(json.dumps({"input_sha256": digest}) + "\n")
                f.write("\n".join(lines) + "\n")
            bar.update(len(chunk))
    write_text_atomic(output_path, "".join(json.dumps(done[i]) + "\n" for i in range(len(requests))))
    partial.unlink(missing_ok=True)
    return len(requests)


def _load_partial(partial: Path, digest: str) -> dict:
    """Rows finished by an earlier run on the same input (a torn last line is dropped)."""
    if not partial.exists():
        return {}
    lines = partial.read_text().splitlines()
    try:
        header = json.loads(lines[0])
    except (IndexError, json.JSONDecodeError):
        header = {}
    if header.get("input_sha256") != digest:
        partial.unlink()
        return {}
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # killed mid-write
        done[row.pop("index")] = row
    rows = [json.dumps(header)] + [json.dumps({"index": i, **row}) for i, row in done.items()]
    write_text_atomic(partial, "\n".join(rows) + "\n")
    return done
