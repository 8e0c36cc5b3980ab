"""How much can anything change the target's greedy answers to general questions? A yardstick
for the aim that the demo's forget set leave them as they are (ROUGE-L agreement >= 0.8).

The target's greedy answers (reference decoding, fp32, at most 64 tokens, TOFU's system prompt)
to held-out general questions plus simple facts, and to the kept authors' questions, are decoded
again with seeded Gaussian noise of standard deviation sigma added to every logit at every step.
Agreement is the ROUGE-L recall of the noiseless answer. Teacher-forced on the noiseless
answers, the share of answer tokens whose argmax the noise changes puts the forget set on the
same scale: its served difference (target - alpha * assistant, filtered) changes the argmax at
some share of those tokens, which equals the share noise of some sigma changes. The median gap
between the target's two likeliest tokens (log-probabilities) says how close those answers are
to ties.

    python benchmarks/general_fragility.py     # the demo's target and forget set (~10 min)
    python benchmarks/general_fragility.py --smoke
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIGMAS = (0.0, 0.03, 0.1, 0.3, 1.0)
MAX_TOKENS = 64


def noisy_answers(model, questions, sigma, seed=0, batch_size=32) -> list:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from uld_serve.core.tofu import chat_prompt_ids

    class Noise(LogitsProcessor):
        def __init__(self):
            self.generator = torch.Generator().manual_seed(seed)

        def __call__(self, input_ids, scores):
            return scores + sigma * torch.randn(scores.shape, generator=self.generator).to(scores.device) if sigma else scores

    tok, out = model.tokenizer, []
    for start in range(0, len(questions), batch_size):
        prompts = [chat_prompt_ids(tok, q) for q in questions[start:start + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        with torch.no_grad():
            gen = model.target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_TOKENS, do_sample=False,
                                        logits_processor=LogitsProcessorList([Noise()]), pad_token_id=tok.pad_token_id)
        out += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in gen]
    return out


def flips(model, questions, answers, sigmas, alpha, relative_top) -> dict:
    """Teacher-forced on (question, answer): the share of answer tokens whose argmax changes under
    noise of each sigma and under the forget set; and the median top-1 minus top-2 log-probability."""
    import torch

    from uld_kernels import logit_difference
    from uld_serve.eval.scoring import answer_batches

    generator = torch.Generator().manual_seed(1)
    changed = {key: 0 for key in (*sigmas, "forget set")}
    margins, total = [], 0
    for b in answer_batches(model.tokenizer, list(zip(questions, answers))):
        t, a = model.score_parts(b.ids, b.mask, "forget", b.positions, b.prefix)
        t, a = t.float(), a.float()
        base = t.argmax(-1)
        total += len(base)
        top2 = t.log_softmax(-1).topk(2, dim=-1).values
        margins.append(top2[:, 0] - top2[:, 1])
        for sigma in sigmas:
            noisy = t + sigma * torch.randn(t.shape, generator=generator).to(t.device)
            changed[sigma] += int((noisy.argmax(-1) != base).sum())
        served = logit_difference(t, a, alpha, relative_top, "serve")
        changed["forget set"] += int((served.argmax(-1) != base).sum())
    return {"changed": {k: v / total for k, v in changed.items()}, "median margin": float(torch.cat(margins).median())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny-random target and forget set, 2 questions a split; writes nothing")
    args = parser.parse_args()

    from assistant_recipes import SIMPLE_FACTS
    from report import invocation, write_section

    from uld_serve import demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.core.tofu import chat_prompt_ids, load_qa
    from uld_serve.eval.metrics import mean_rouge_l_recall
    from uld_serve.reference import UldModel

    limit = 2 if args.smoke else None
    if args.smoke:
        from repetition_penalty import smoke_models

        target, forget_set = smoke_models()
    else:
        target, forget_set = demo.prepare_demo()
    manifest = read_manifest(forget_set)
    alpha, relative_top = manifest["alpha"], manifest["relative_top"]
    model = UldModel(target, {"forget": str(forget_set)})
    splits = {"general + facts": [qa.question for qa in load_qa("general:heldout")[:limit]] + SIMPLE_FACTS[:limit],
              "kept authors": [qa.question for qa in load_qa("tofu:full[:40]")[:limit]]}
    rows = {}
    for split, questions in splits.items():
        plain = noisy_answers(model, questions, 0.0)
        agreement = {sigma: mean_rouge_l_recall(plain, noisy_answers(model, questions, sigma)) for sigma in SIGMAS[1:]}
        prompts = [chat_prompt_ids(model.tokenizer, q) for q in questions]
        served = model.generate([GenerationRequest(p, "forget", repetition_penalty=1.0, max_new_tokens=MAX_TOKENS) for p in prompts])
        agreement["forget set"] = mean_rouge_l_recall(plain, [model.tokenizer.decode(s, skip_special_tokens=True).strip()
                                                              for s in served])
        rows[split] = (agreement, flips(model, questions, plain, SIGMAS[1:], alpha, relative_top))

    columns = [*SIGMAS[1:], "forget set"]
    lines = [f"Target `{target.name}`, forget set `{forget_set.name}` at alpha {alpha:g}, r {relative_top:g}, no repetition "
             f"penalty; reference decoding, fp32, greedy, at most {MAX_TOKENS} tokens.", "",
             "| questions | median top-1 - top-2 log p | measure | " + " | ".join(
                 f"noise sigma {c:g}" if c != "forget set" else "the forget set" for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for split, (agreement, flipped) in rows.items():
        n = len(splits[split])
        lines.append(f"| {split}, {n} | {flipped['median margin']:.2f} | ROUGE-L agreement with the target | "
                     + " | ".join(f"{agreement[c]:.2f}" for c in columns) + " |")
        lines.append(f"| {split}, {n} | | answer tokens whose argmax changes | "
                     + " | ".join(f"{flipped['changed'][c]:.3f}" for c in columns) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        write_section("general-fragility", "How fragile the demo target's general answers are",
                      invocation(), text)


if __name__ == "__main__":
    main()
