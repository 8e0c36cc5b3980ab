"""General-knowledge retain data for the ULD assistant, made from models alone (no outside text).

The assistant learns to be uniform on its retain data. With TOFU's retain authors only, it
never sees general text, and at K = 15 of 30 layers subtracting it damages the target's
general answers (BENCHMARKS.md, greedy answers against alpha). This script writes QA pairs
that cover general knowledge without reading any evaluation split:

1. questions: the embedded SmolLM2-135M-Instruct (not the TOFU target) writes the user turn
   of a chat, started with a question opener ("Who wrote", "What is", ...), sampled at
   temperature 0.8, one seed per question; cut at the first "?";
2. answers: the tofu-mini target's own greedy answers (vLLM engine, fp32), so the pairs say
   what the target knows; answers cut off at the token limit are dropped;
3. duplicates and any question that appears in a TOFU split are dropped, and for an opener set
   near a utility test split (`--openers authors`: real authors) every pair that touches it
   (`overlap_check`: its authors' surnames, its quoted titles, two content words of a question).
   The first `--train` pairs go to train.jsonl (assistant retain data, `jsonl:` spec); the next `--heldout` to
   heldout.jsonl (a utility check that reads no evaluation split).

    python benchmarks/general_qa.py            # -> <workdir>/general-qa/{train,heldout}.jsonl
    python benchmarks/general_qa.py --openers names --train 400 --heldout 80   # -> <workdir>/names-qa/
    python benchmarks/general_qa.py --openers varied --train 1200 --heldout 100 --sample 3000   # -> <workdir>/varied-qa/
    python benchmarks/general_qa.py --openers authors --train 400 --heldout 80 --sample 2000   # -> <workdir>/authors-qa/

The demo's vendored set (uld_serve/data/general/) was made with the embedded model answering its own
questions:

    python benchmarks/general_qa.py --target smollm2-135m-instruct --out uld_serve/data/general --sample 1000 --train 280 --heldout 70
    python benchmarks/general_qa.py --target smollm2-135m-instruct --out uld_serve/data/general --openers names \
        --prefix names- --sample 420 --train 200 --heldout 40
"""
import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mini_workdir import QA_FOLDERS, default_workdir  # noqa: E402

OPENERS = {"general": ["What is", "What are", "What was", "Who was", "Who is", "Who wrote", "Where is", "When did",
                       "Why do", "How does", "How many", "Which"],
           # questions whose answers name people outside literature (names_retain.py): TOFU's
           # real-authors split asks who wrote what, so no opener here asks about writing
           "names": ["Who painted", "Who composed", "Who invented", "Who discovered", "Who founded", "Who directed",
                     "Who designed", "Who built", "Who led", "Who sang", "Who played", "Who won"],
           # the rest of what a chat model is asked: places, events, works, science, everyday life
           # (tune_assistant.py's varied candidate); none asks who wrote what either
           "varied": ["Which city", "Which country", "Where can", "When was", "In which year", "What happened",
                      "What causes", "How do", "What does", "Why is", "How long", "How far", "What language",
                      "What kind of", "Who was the first", "Which instrument", "What is the name of", "Which planet"],
           # questions about real writers and their books, the kind TOFU's real-authors split asks,
           # kept apart from that split by `overlap_check` (DECONTAMINATE): it measures model utility
           "authors": ["Who wrote", "Who is the author of", "Which author wrote", "Which novelist", "Which poet",
                       "Who penned", "Which writer", "Who created the character", "Which playwright"]}
# the TOFU splits an opener set's pairs must not touch (they are utility tests); `overlap_check` says how
DECONTAMINATE = {"authors": ("real_authors",)}
_STOP = {"the", "a", "an", "of", "in", "on", "and", "or", "to", "for", "is", "was", "who", "which", "what", "by", "with",
         "known", "wrote", "author", "novel", "book", "play", "series", "famous", "written"}
CONFIG = {"question_model": "smollm2-135m-instruct", "temperature": 0.8, "question_tokens": 40, "answer_tokens": 128}


def sample_questions(count: int, seed: int, openers: list) -> list:
    from uld_serve.api import open_backend
    from uld_serve.core.models import resolve_model
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.core.tofu import SYSTEM_PROMPT

    engine = open_backend(resolve_model(CONFIG["question_model"]), {}, "vllm", "fp32")
    tok = engine.tokenizer
    try:
        head = tok.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT}], tokenize=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        openers = [openers[i % len(openers)] for i in range(count)]
        requests = [GenerationRequest(head + tok(f"<|im_start|>user\n{o}", add_special_tokens=False)["input_ids"],
                                      max_new_tokens=CONFIG["question_tokens"], temperature=CONFIG["temperature"],
                                      seed=seed * 1_000_003 + i) for i, o in enumerate(openers)]
        texts = [o + tok.decode(ids, skip_special_tokens=True) for o, ids in zip(openers, engine.generate(requests))]
    finally:
        engine.close()
    return [q for q in (question(t) for t in texts) if q]


def question(text: str):
    """The text up to its first '?', if that is one plain line of reasonable length."""
    end = text.find("?")
    q = text[: end + 1].strip()
    return q if end > 0 and "\n" not in q and 15 <= len(q) <= 200 else None


def _words(text: str) -> list:
    return re.findall(r"[\w']+", text.lower())


def _bigrams(text: str) -> set:
    words = _words(text)
    return {pair for pair in zip(words, words[1:]) if not (set(pair) & _STOP)}


def overlap_check(rows):
    """A predicate on QA pairs: whether a pair touches a test split's `rows`: it names one of their
    answers (a real author's surname) or a title they quote, or its question shares two
    consecutive content words with one of their questions ("Sherlock Holmes")."""
    surnames = {words[-1] for words in (_words(row["answer"]) for row in rows) if words and len(words[-1]) >= 3}
    # a title's quotes stand outside words, so an apostrophe ("children's", "Charlotte's Web") neither
    # opens nor closes one
    titles = {title.lower() for row in rows for title in re.findall(r"(?<!\w)'(.{3,}?)'(?!\w)", row["question"])}
    bigrams = set().union(*(_bigrams(row["question"]) for row in rows))

    def overlaps(pair: dict) -> bool:
        text = f"{pair['question']} {pair['answer']}".lower()
        return bool(surnames & set(_words(text)) or any(title in text for title in titles) or _bigrams(pair["question"]) & bigrams)
    return overlaps


def answer(questions: list, target: str) -> list:
    from uld_serve.api import open_backend
    from uld_serve.core.models import resolve_model
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.core.tofu import chat_prompt_ids

    engine = open_backend(resolve_model(target), {}, "vllm", "fp32")
    try:
        requests = [GenerationRequest(chat_prompt_ids(engine.tokenizer, q), max_new_tokens=CONFIG["answer_tokens"])
                    for q in questions]
        outputs = engine.generate(requests)
        return [engine.tokenizer.decode(ids, skip_special_tokens=True).strip() if len(ids) < CONFIG["answer_tokens"] else None
                for ids in outputs]
    finally:
        engine.close()


def target_answers(generator, questions: list, cache: Path) -> list:
    """The target's greedy answers (no forget set; a UldEngine or the reference UldModel) to `questions`, cached at
    `cache` with the questions they answer and recomputed when those change."""
    from uld_serve.core.atomic import write_json_atomic
    from uld_serve.eval.scoring import greedy_answers

    known = json.loads(cache.read_text()) if cache.exists() else {}
    if known.get("questions") != questions:
        known = {"questions": questions, "answers": greedy_answers(generator, questions, max_new_tokens=200)}
        write_json_atomic(cache, known)
    return known["answers"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--target", default=None, help="the model that answers (default: <workdir>/target)")
    parser.add_argument("--openers", choices=sorted(OPENERS), default="general",
                        help="general questions, questions about people outside literature, varied ones, or about real writers")
    parser.add_argument("--out", type=Path, default=None, help="default: <workdir>/<openers>-qa")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--sample", type=int, default=None, help="questions to sample (default: 2 x wanted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="", help="prefix of the three file names written (e.g. 'names-')")
    args = parser.parse_args()
    from uld_serve.core.atomic import write_text_atomic
    from uld_serve.core.tofu import SPLITS, load_split

    work = args.workdir or default_workdir()
    out = args.out or work / QA_FOLDERS[args.openers]
    target = args.target or str(work / "target")
    wanted = args.train + args.heldout
    sampled = args.sample or 2 * wanted
    tofu_questions = {r["question"].strip().lower() for s in SPLITS for r in load_split(s)}
    sampled_questions = sample_questions(sampled, args.seed, OPENERS[args.openers])
    questions = list(dict.fromkeys(q for q in sampled_questions if q.lower() not in tofu_questions))
    pairs = [{"question": q, "answer": a} for q, a in zip(questions, answer(questions, target)) if a]
    overlaps = overlap_check([r for split in DECONTAMINATE.get(args.openers, ()) for r in load_split(split)])
    pairs = [p for p in pairs if not overlaps(p)]
    if len(pairs) < wanted:
        sys.exit(f"error: only {len(pairs)} usable pairs for {wanted} wanted; raise --sample")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{args.prefix}train.jsonl", "".join(json.dumps(p) + "\n" for p in pairs[: args.train]))
    write_text_atomic(out / f"{args.prefix}heldout.jsonl", "".join(json.dumps(p) + "\n" for p in pairs[args.train: wanted]))
    config = {**CONFIG, "openers": OPENERS[args.openers], "seed": args.seed, "sampled": sampled, "usable": len(pairs),
              "train": args.train, "heldout": args.heldout, "target": target}
    write_text_atomic(out / f"{args.prefix}config.json", json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.train} + {args.heldout} pairs to {out} ({len(pairs)} usable of {sampled} sampled)")


if __name__ == "__main__":
    main()
