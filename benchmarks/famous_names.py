"""Famous names kept through the subtraction: a check of ULD assistants that reads no evaluation split.

tofu-mini's model utility hangs on real authors' greedy answers: the target answers about 13 of
those 100 questions right, so two famous names lost cost 5% of utility (BENCHMARKS.md, "A second
seed under the current rule"). Model-written questions cannot stand in for them (the embedded
model asks about people and books that do not exist; general_qa.py --openers authors). This check
asks hand-written questions about famous people (benchmarks/data/famous-people.jsonl: painters,
composers, scientists, explorers, leaders, founders, athletes, writers; each with the names a
right answer contains), drops every one that touches TOFU's real-authors split
(general_qa.overlap_check), keeps those the target answers right (greedy, a name in its answer),
and reports the share of them whose served answer still holds a name. tune_assistant.py reads
it for every validation candidate and forget10 assistant.

A second hand-written set about other famous people (benchmarks/data/famous-people-train.jsonl;
no person in both) answered by the target is retain data for an assistant (`write_retain`): it
tests whether an assistant told to know nothing about famous people keeps their names in the
served answers.
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from general_qa import answer, overlap_check, target_answers as cached_answers  # noqa: E402

QUESTIONS = REPO / "benchmarks" / "data" / "famous-people.jsonl"
TRAIN_QUESTIONS = REPO / "benchmarks" / "data" / "famous-people-train.jsonl"
TARGET_ANSWERS = "famous-names-target.json"  # where a caller caches the target's answers


def famous_questions(limit=None, path: Path = QUESTIONS) -> list:
    """The hand-written rows ({"question", "names"}) that touch no real-authors test item."""
    from uld_serve.core.tofu import load_split

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    touches = overlap_check(load_split("real_authors"))
    return [r for r in rows if not touches({"question": r["question"], "answer": " ".join(r["names"])})][:limit]


def names_in(answer: str, names: list) -> bool:
    return any(name.lower() in answer.lower() for name in names)


def kept(generator, forget_set: str, alphas: list, target_answers: Path, limit=None) -> dict:
    """alpha -> {"kept": share of the questions the target answers right whose served greedy answer
    (forget set `forget_set` on `generator`: a UldEngine or the reference UldModel) still names the
    person, "known": how many the target answers right, "lost": the questions lost}. The target's
    answers are cached in `target_answers` with the questions they answer (recomputed when those
    change)."""
    from uld_serve.eval.scoring import greedy_answers

    rows = famous_questions(limit)
    questions = [r["question"] for r in rows]
    answers = cached_answers(generator, questions, target_answers)
    known = [i for i, (r, a) in enumerate(zip(rows, answers)) if names_in(a, r["names"])]
    result = {}
    for alpha in alphas:
        served = greedy_answers(generator, [questions[i] for i in known], forget_set, alpha, max_new_tokens=200)
        lost = [questions[i] for i, a in zip(known, served) if not names_in(a, rows[i]["names"])]
        result[f"{alpha:g}"] = {"kept": 1 - len(lost) / len(known) if known else None, "known": len(known), "lost": lost}
    return result


def write_retain(target, out: Path, limit=None) -> Path:
    """TRAIN_QUESTIONS answered by the target (greedy, vLLM engine, fp32) as a `jsonl:` retain
    file at `out`, written once; pairs cut at the token limit or touching a real-authors item
    are dropped, as general_qa.py drops them."""
    from uld_serve.core.atomic import write_text_atomic
    from uld_serve.core.tofu import load_split

    if not out.exists():
        questions = [r["question"] for r in famous_questions(limit, TRAIN_QUESTIONS)]
        touches = overlap_check(load_split("real_authors"))
        pairs = [{"question": q, "answer": a} for q, a in zip(questions, answer(questions, str(target))) if a]
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, "".join(json.dumps(p) + "\n" for p in pairs if not touches(p)))
    return out
