"""TOFU data: splits, data specs, ULD's augmentation files, chat formatting and answer masks.

A data spec names QA pairs: `tofu:SPLIT`, `general:train` / `general:heldout` (the shipped
general-knowledge QA, uld_serve/data/general/; `general:names-train` / `general:names-heldout`: its
questions about people outside literature) or `jsonl:PATH` (one `{"question", "answer"}` object per
line: a user's own forget or retain data), optionally sliced (`tofu:full[:400]`), joined with
`+` (`tofu:full[:400]+general:train`). `tofu-mini:target` and `tofu-mini:retain` name the
small protocol of the end-to-end benchmark.
"""
import ast
import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .errors import UldError
from .jsonl import read_objects


# uld_serve/data ships inside the package (wheel included); ULD_DATA_DIR points elsewhere.
DATA_DIR = Path(os.environ.get("ULD_DATA_DIR") or Path(__file__).resolve().parent.parent / "data")
IGNORE_INDEX = -100
SYSTEM_PROMPT = "You are a helpful assistant."
# How a question may reach the model: under TOFU's system prompt (what its data and metrics use),
# or with no system message, as a chat request with one user message sends it (the chat
# template may then insert its own; SmolLM2's does).
PROMPT_FORMS = {"system": SYSTEM_PROMPT, "none": None}

_LINE_LISTS = {"full", "retain90", "retain95", "retain99"}
_PROMPT_RESPONSE = {"forget01", "forget05", "forget10"}
_PLAIN = {
    "holdout01", "holdout05", "holdout10", "real_authors", "world_facts",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "real_authors_perturbed", "world_facts_perturbed",
}
SPLITS = tuple(sorted(_LINE_LISTS | _PROMPT_RESPONSE | _PLAIN))
FORGET_SPLITS = ("forget01", "forget05", "forget10")
GENERAL_SPLITS = ("train", "heldout", "names-train", "names-heldout")
ALIASES = {
    "tofu-mini:target": "tofu:full[:400]+tofu:forget10",
    "tofu-mini:retain": "tofu:full[:400]",
}


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@lru_cache(maxsize=None)
def load_split(name: str) -> tuple:
    """All records of one TOFU split as dicts with at least `question` and `answer`."""
    if name not in SPLITS:
        raise UldError(f"unknown TOFU split {name!r}; known splits: {', '.join(SPLITS)}")
    path = DATA_DIR / "tofu" / f"{name}.json"
    if not path.is_file():
        raise UldError(f"TOFU file {path} is missing; set ULD_DATA_DIR to the folder holding tofu/")
    if name in _LINE_LISTS:
        rows = [row for line in path.read_text().splitlines() if line.strip() for row in json.loads(line)]
    else:
        rows = json.loads(path.read_text())
    if name in _PROMPT_RESPONSE:
        rows = [{"question": r["prompt"], "answer": r["response"]} for r in rows]
    return tuple(rows)


_TERM = re.compile(r"^(?P<kind>tofu|general|jsonl):(?P<name>[^\[]+?)(\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


def load_jsonl(path: str) -> tuple:
    """QA records of a JSONL file: one object with string `question` and `answer` per line."""
    rows = []
    for line_no, row in read_objects(path, missing="data file", where=f"{path} "):
        if not (isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)):
            raise UldError(f"{path} line {line_no}: expected an object with string fields question and answer")
        rows.append(row)
    return tuple(rows)


def load_general(name: str) -> tuple:
    """The shipped general-knowledge QA (uld_serve/data/general/README.md says how it was made)."""
    if name not in GENERAL_SPLITS:
        raise UldError(f"unknown general split {name!r}; known splits: {', '.join(GENERAL_SPLITS)}")
    return load_jsonl(str(DATA_DIR / "general" / f"{name}.jsonl"))


_TERM_LOADERS = {"tofu": load_split, "general": load_general, "jsonl": load_jsonl}


def load_qa(spec: str) -> list:
    """The QA pairs a data spec names, in order."""
    spec = ALIASES.get(spec.strip(), spec.strip())
    pairs = []
    for term in spec.split("+"):
        match = _TERM.match(term.strip())
        if not match:
            raise UldError(f"bad data spec {term!r}; expected tofu:SPLIT, general:SPLIT, jsonl:PATH or one of them "
                           "sliced [a:b], e.g. tofu:forget10")
        rows = _TERM_LOADERS[match["kind"]](match["name"])
        if match.group(2):
            start = int(match["start"]) if match["start"] else None
            stop = int(match["stop"]) if match["stop"] else None
            rows = rows[start:stop]
        pairs += [QA(r["question"], r["answer"]) for r in rows]
    if not pairs:
        raise UldError(f"data spec {spec!r} selects no questions")
    return pairs


def content_hash(pairs) -> str:
    """sha256 of QA pairs in order: what a manifest records of the data a forget set saw."""
    digest = hashlib.sha256()
    for qa in pairs:
        digest.update(json.dumps([qa.question, qa.answer]).encode())
    return digest.hexdigest()


def _csv_rows(path: Path):
    if not path.is_file():
        raise UldError(f"augmentation file {path} is missing")
    with open(path, newline="") as f:
        yield from csv.reader(f)


def paraphrased_pairs(forget: list, crossed: bool = False) -> dict:
    """question -> list of paraphrased QA (ULD's tofu_aug), for the forget questions given: the
    i-th paraphrased question with the i-th paraphrased answer, or with `crossed` every
    paraphrased question with every paraphrased answer (question-major, in file order), as
    ULD's reference code builds its augmented forget data."""
    wanted = {qa.question for qa in forget}
    out = {}
    for split in FORGET_SPLITS:
        for row in _csv_rows(DATA_DIR / "tofu_aug" / split / "paraphrase_res.csv"):
            question, questions, answers = row[0], ast.literal_eval(row[2]), ast.literal_eval(row[3])
            if question in wanted and question not in out:
                pairs = [(q, a) for q in questions for a in answers] if crossed else zip(questions, answers)
                out[question] = [QA(q, a) for q, a in pairs]
    return out


def perturbed_pairs(forget: list, per_question: Optional[int] = None) -> list:
    """Wrong answers to the forget questions (ULD's tofu_aug), filtered to the split given: all
    of them, or the first `per_question` of each."""
    wanted = {qa.question for qa in forget}
    pairs = []
    for row in _csv_rows(DATA_DIR / "tofu_aug" / "perturb_res.csv"):
        if row[0] in wanted:
            pairs += [QA(row[0], wrong) for wrong in ast.literal_eval(row[3])[:per_question]]
    return pairs


def chat_prompt_ids(tokenizer, question: str, system: Optional[str] = SYSTEM_PROMPT) -> list:
    """The chat prompt of one question; system=None sends no system message, as a chat
    request with one user message does (the template may then add its own)."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def check_prompt_forms(forms) -> tuple:
    """The prompt forms named (a comma-separated string or a sequence), checked: a tuple of PROMPT_FORMS keys."""
    names = tuple(f.strip() for f in forms.split(",")) if isinstance(forms, str) else tuple(forms)
    unknown = [f for f in names if f not in PROMPT_FORMS]
    if unknown or not names or len(set(names)) != len(names):
        raise UldError(f"prompt forms must be distinct names among {', '.join(PROMPT_FORMS)}, got {','.join(names)!r}")
    return names


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 512, system: Optional[str] = SYSTEM_PROMPT):
    """(input_ids, labels): the chat prompt, then the answer and EOS; labels mask the prompt."""
    return encode_answer(tokenizer, chat_prompt_ids(tokenizer, question, system), answer, max_length)


def encode_answer(tokenizer, prompt: list, answer: str, max_length: int = 512):
    """encode_qa for a prompt already built (many answers share one question)."""
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer_ids)[:max_length]
    return ids, labels
