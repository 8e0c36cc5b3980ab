"""`uld generate`: JSONL in, JSONL out, in input order, written atomically and resumable.

Each input line is an object with `prompt` (chat user message), `messages` (a chat) or
`prompt_ids`, and optionally `id`, `forget_set`, `alpha`, `relative_top`, `max_tokens`,
`temperature`, `top_p`, `seed`. Completed chunks are kept in a hidden partial file beside
the output, so an interrupted run resumes; the output appears only when all lines are done.
"""
import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from .artifact import ALPHA_RANGE
from .atomic import write_text_atomic
from .errors import UldError
from .jsonl import read_objects
from .reference import GenerationRequest
from .tofu import SYSTEM_PROMPT

FIELDS = {"id", "prompt", "messages", "prompt_ids", "forget_set", "alpha", "relative_top", "max_tokens", "temperature", "top_p", "seed"}


def _number(line_no, row, key, default, low=None, high=None, integer=False):
    value = row.get(key, default)
    kinds = (int,) if integer else (int, float)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        raise UldError(f"line {line_no}: {key} must be a{'n integer' if integer else ' number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise UldError(f"line {line_no}: {key} must be in [{low}, {high}], got {value}")
    return value


def parse_requests(path: Path, tokenizer, known_forget_sets, default_max_tokens=256) -> list:
    requests = []
    for line_no, row in read_objects(path):
        unknown = set(row) - FIELDS
        if unknown:
            raise UldError(f"line {line_no}: unknown field(s) {', '.join(sorted(unknown))}")
        forget_set = row.get("forget_set")
        if forget_set is not None and forget_set not in known_forget_sets:
            known = ", ".join(sorted(known_forget_sets)) or "none"
            raise UldError(f"line {line_no}: unknown forget set {forget_set!r}; known forget sets: {known}")
        requests.append((row.get("id", len(requests)), forget_set, GenerationRequest(
            prompt_ids=_prompt_ids(line_no, row, tokenizer),
            forget_set=forget_set,
            alpha=None if row.get("alpha") is None else _number(line_no, row, "alpha", None, *ALPHA_RANGE),
            relative_top=None if row.get("relative_top") is None else _number(line_no, row, "relative_top", None, 1e-9, 1.0),
            max_new_tokens=_number(line_no, row, "max_tokens", default_max_tokens, 1, None, integer=True),
            temperature=_number(line_no, row, "temperature", 0.0, 0.0, 100.0),
            top_p=_number(line_no, row, "top_p", 1.0, 1e-9, 1.0),
            seed=_number(line_no, row, "seed", 0, 0, None, integer=True),
        )))
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
        if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
            raise UldError(f"line {line_no}: messages must be a list of {{role, content}} objects")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def run_generate(backend, input_path: Path, output_path: Path, chunk_size: int = 64) -> int:
    """`backend` has .tokenizer, .forget_sets and .generate(list[GenerationRequest]) -> token ids."""
    output_path = Path(output_path)
    requests = parse_requests(input_path, backend.tokenizer, backend.forget_sets)
    digest = hashlib.sha256(Path(input_path).read_bytes()).hexdigest()
    partial = output_path.parent / f".{output_path.name}.partial"
    done = _load_partial(partial, digest)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(requests), initial=len(done), desc="generate", unit="req", dynamic_ncols=True) as bar:
        todo = [i for i in range(len(requests)) if i not in done]
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            outputs = backend.generate([requests[i][2] for i in chunk])
            lines = []
            for i, tokens in zip(chunk, outputs):
                rid, forget_set, req = requests[i]
                alpha = _applied_alpha(backend, req)
                done[i] = {"id": rid, "forget_set": forget_set, "alpha": alpha,
                           "text": backend.tokenizer.decode(tokens, skip_special_tokens=True), "token_ids": tokens}
                lines.append(json.dumps({"index": i, **done[i]}))
            with open(partial, "a") as f:
                if f.tell() == 0:
                    f.write(json.dumps({"input_sha256": digest}) + "\n")
                f.write("\n".join(lines) + "\n")
            bar.update(len(chunk))
    write_text_atomic(output_path, "".join(json.dumps(done[i]) + "\n" for i in range(len(requests))))
    partial.unlink(missing_ok=True)
    return len(requests)


def _applied_alpha(backend, req) -> float:
    return 0.0 if req.forget_set is None else backend.forget_sets[req.forget_set].settings(req.alpha)[0]


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
