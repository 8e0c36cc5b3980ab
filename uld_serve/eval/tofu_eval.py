"""`uld eval tofu`: run a model (or target + forget set) over TOFU's evaluation splits and
write TOFU_EVAL.json (per sample), TOFU_SUMMARY.json and summary.md."""
import json
import logging
import math
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..core.artifact import find_forget_set, read_json
from ..core.atomic import write_json_atomic, write_text_atomic
from ..core.errors import UldError
from ..core.tofu import FORGET_SPLITS, load_split
from . import metrics as m
from .scoring import SCORE_BATCH, greedy_answers, score_pairs
from .summary import markdown_table, recompute

logging.getLogger("absl").setLevel(logging.WARNING)

SCORING_MODES = {"paper": "score", "anchored": "score_anchored"}  # --scoring -> logit_difference mode
PARTIAL = ".TOFU_EVAL.partial.json"  # the splits done so far, while an evaluation runs


def _datasets(split):
    """prefix -> (TOFU split, has paraphrased answers)"""
    return {
        "forget": (f"{split}_perturbed", True),
        "retain": ("retain_perturbed", True),
        "ra": ("real_authors_perturbed", False),
        "wf": ("world_facts_perturbed", False),
    }


def scored_pairs(rows, has_para) -> list:
    """The (question, answer) pairs whose probabilities a split is scored on: every answer, then
    every paraphrased answer (if the split has them), then each question's perturbed answers."""
    pairs = [(r["question"], r["answer"]) for r in rows]
    pairs += [(r["question"], r["paraphrased_answer"]) for r in rows if has_para]
    return pairs + [(r["question"], w) for r in rows for w in r["perturbed_answer"]]


def load_logs(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UldError(f"evaluation log {path} does not exist")
    logs = read_json(path)
    if not isinstance(logs, dict):
        raise UldError(f"{path} is not a TOFU_EVAL.json (expected an object of metrics)")
    return logs


def check_scoring(scoring: str):
    if scoring not in SCORING_MODES:
        raise UldError(f"--scoring must be one of {', '.join(SCORING_MODES)}, got {scoring!r}")


def evaluate_tofu(model, out_dir, split="forget10", forget_set=None, alpha=None, relative_top=None,
                  retain_logs=None, max_new_tokens=200, batch_size=SCORE_BATCH, gen_batch_size=32, label="model", limit=None,
                  generator=None, scoring="paper"):
    """`limit` keeps the first N items of each split: for smoke tests, not for reported numbers.
    `generator` produces the greedy answers (default: `model`'s reference decoding; the vLLM
    engine gives the same tokens in fp32, faster); `model` always scores probabilities.
    `scoring` (forget sets only): "paper" (the paper's forward) or "anchored" (kernels/README.md)."""
    if split not in FORGET_SPLITS:
        raise UldError(f"--split must be one of {', '.join(FORGET_SPLITS)}, got {split!r}")
    check_scoring(scoring)
    reference = load_logs(retain_logs) if retain_logs else None
    if limit is not None and limit < 1:
        raise UldError("--limit must be at least 1")
    datasets = {prefix: (load_split(name)[:limit], para) for prefix, (name, para) in _datasets(split).items()}
    holdout = load_split(split.replace("forget", "holdout"))[:limit]
    total = sum(len(rows) * (2 + para + len(rows[0]["perturbed_answer"])) for rows, para in datasets.values()) + len(holdout)
    kwargs = {"forget_set": forget_set, "alpha": alpha, "relative_top": relative_top}
    score_kwargs = {**kwargs, "mode": SCORING_MODES[scoring]}
    scorer = m.rouge_scorer()
    out_dir = Path(out_dir)
    partial = Partial(out_dir / PARTIAL, _run_key(model, split, scoring, limit, max_new_tokens, **kwargs))
    logs = partial.logs
    with tqdm(total=total, desc=f"eval {label}", unit="seq", dynamic_ncols=True) as bar:
        for prefix, (rows, has_para) in datasets.items():
            if f"{prefix}_Q_A_ROUGE" in logs:  # done before an interruption
                bar.update(len(rows) * (2 + has_para + len(rows[0]["perturbed_answer"])))
                continue
            questions = [r["question"] for r in rows]
            n, n_wrong = len(rows), len(rows[0]["perturbed_answer"])
            # one call, so that a question's answer, paraphrase and perturbed answers share its prompt
            scored = score_pairs(model, scored_pairs(rows, has_para), batch_size=batch_size, progress=bar.update, **score_kwargs)
            answers, flat = scored[:n], scored[len(scored) - n * n_wrong:]
            logs[f"{prefix}_Q_A_Prob"] = _prob_log(answers)
            if has_para:
                logs[f"{prefix}_Q_A_PARA_Prob"] = _prob_log(scored[n : 2 * n])
            logs[f"{prefix}_Q_A_PERT_Prob"] = _prob_log([flat[i * n_wrong : (i + 1) * n_wrong] for i in range(n)])
            generations = greedy_answers(generator or model, questions, max_new_tokens=max_new_tokens, batch_size=gen_batch_size,
                                         progress=bar.update, **kwargs)
            logs[f"{prefix}_Q_A_ROUGE"] = {"value_by_index": {
                str(i): {**m.rouge_scores(scorer, r["answer"], g), "input": r["question"], "ground_truth": r["answer"], "generation": g}
                for i, (r, g) in enumerate(zip(rows, generations))
            }}
            if prefix == "forget":
                partial.forget_answers = answers
                logs["extraction_strength"] = {"value_by_index": {
                    str(i): {"score": m.extraction_strength(a["matches"])} for i, a in enumerate(answers)}}
            partial.save()
        held = score_pairs(model, [(r["question"], r["answer"]) for r in holdout], batch_size=batch_size, progress=bar.update,
                           **score_kwargs)
    forget_answers = partial.forget_answers
    forget_texts = [r["answer"] for r in datasets["forget"][0]]
    holdout_texts = [r["answer"] for r in holdout]
    logs["mia_min_k"] = _mia_log(forget_answers, held, lambda a, _: m.min_k_score(a["token_logprobs"], 0.4), forget_texts, holdout_texts)
    logs["mia_loss"] = _mia_log(forget_answers, held, lambda a, _: a["avg_loss"], forget_texts, holdout_texts)
    logs["mia_zlib"] = _mia_log(forget_answers, held, lambda a, text: m.zlib_score(a["avg_loss"], text), forget_texts, holdout_texts)
    summary = recompute(logs, reference)
    write_json_atomic(out_dir / "TOFU_EVAL.json", dict(sorted(logs.items())))
    write_json_atomic(out_dir / "TOFU_SUMMARY.json", summary)
    if forget_set is not None and scoring != "paper":
        label = f"{label} ({scoring} scoring)"
    write_text_atomic(out_dir / "summary.md", markdown_table({label: summary}))
    partial.remove()
    return summary


def _run_key(model, split, scoring, limit, max_new_tokens, forget_set, alpha, relative_top) -> dict:
    """What a partial evaluation must share with this run to be resumed: the models (fingerprints,
    the forget set's manifest and adapter file) and every option that changes a number."""
    key = {"target": model.target_fingerprint, "dtype": str(model.target.dtype), "split": split, "scoring": scoring,
           "limit": limit, "max_new_tokens": max_new_tokens, "alpha": alpha, "relative_top": relative_top, "forget_set": None}
    if forget_set is not None:
        fs = find_forget_set(model.forget_sets, forget_set)
        adapter = fs.path / "adapter_model.safetensors"
        key["forget_set"] = {"manifest": fs.manifest, "adapter": [adapter.stat().st_size, adapter.stat().st_mtime_ns]}
    return key


class Partial:
    """The splits evaluated so far, saved after each one, so that an interrupted `uld eval tofu`
    resumes where it stopped (an evaluation takes about half an hour on 2 CPU cores). A partial
    file from a run with other models or options is ignored and replaced."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = path, json.loads(json.dumps(key))  # as it reads back from JSON
        saved = read_json(path) if path.is_file() else None
        resumed = isinstance(saved, dict) and saved.get("key") == self.key
        self.logs = saved["logs"] if resumed else {}
        self.forget_answers = saved.get("forget_answers") if resumed else None

    def save(self):
        write_json_atomic(self.path, {"key": self.key, "logs": self.logs, "forget_answers": self.forget_answers})

    def remove(self):
        self.path.unlink(missing_ok=True)


def _prob_log(results) -> dict:
    def entry(r):
        if isinstance(r, list):
            return {"prob": [math.exp(-x["avg_loss"]) for x in r], "avg_loss": [x["avg_loss"] for x in r]}
        return {"prob": math.exp(-r["avg_loss"]), "avg_loss": r["avg_loss"]}
    return {"value_by_index": {str(i): entry(r) for i, r in enumerate(results)}}


def _mia_log(forget, holdout, score, forget_texts, holdout_texts) -> dict:
    return {
        side: {"value_by_index": {str(i): {"score": float(score(a, t))} for i, (a, t) in enumerate(zip(results, texts))}}
        for side, results, texts in (("forget", forget, forget_texts), ("holdout", holdout, holdout_texts))
    }


def evaluate_checkpoint(target: str, forget_set: Optional[tuple], out_dir, split="forget10", *, dtype="fp32", device="auto",
                        generate_with="reference", batch_size=None, **kwargs) -> dict:
    """`uld eval tofu`: open the target (and forget set, a (name, directory) pair) and evaluate
    it; the reference decoder scores, `generate_with` (reference or vllm) writes greedy answers."""
    from ..api import open_backend

    check_scoring(kwargs.get("scoring", "paper"))
    if generate_with not in ("reference", "vllm"):
        raise UldError(f"--generate-with must be reference or vllm, got {generate_with!r}")
    sets = dict([forget_set]) if forget_set else {}
    model = open_backend(target, sets, "reference", dtype, device)
    generator = open_backend(target, sets, "vllm", dtype) if generate_with == "vllm" else None
    name = forget_set[0] if forget_set else None
    try:
        return evaluate_tofu(model, out_dir, split, name, batch_size=SCORE_BATCH if batch_size is None else batch_size,
                             label=f"{Path(target).name}+{name}" if name else Path(target).name, generator=generator, **kwargs)
    finally:
        if generator is not None:
            generator.close()
