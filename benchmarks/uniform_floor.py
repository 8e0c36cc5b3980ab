"""How uniform can an assistant built on this target be at all?

The assistant's logits are the target's LM head applied to the target's final RMSNorm of its
K-th layer's hidden state; a forget set trains LoRA deltas on those K layers only, so the norm's
gain and the head stay the target's. Whatever the hidden state h, the logits are
W (g * h / rms(h)): a vector of fixed size pushed through a fixed matrix. This finds, by
gradient descent over h (three seeds), the smallest CE(uniform, softmax(logits)) - log V that
any hidden state reaches, and the standard deviation of those logits over the vocabulary. No
training data can take the retain term below that floor, and alpha times that spread is left
in every served logit of the assistant on retained text.

The floor's logits b, the same at every position, are the most uniform assistant the paper's
retain term can ask for: one that knows nothing at all. Served as target - alpha * b (filtered,
at the demo forget set's calibrated alpha), they change general answers by this much: the share
of the target's own general answer tokens whose argmax changes (teacher-forced, as
`benchmarks/general_fragility.py` counts it) and the ROUGE-L agreement of greedy answers. The
demo's forget set is measured beside it as trained (a) and less the floor (a - b), which is not
the paper's served formula and is not built into the engine: it asks whether the per-token bias
that b stands for is what changes general answers.

    python benchmarks/uniform_floor.py                 # the demo's target (and SmolLM2 itself)
    python benchmarks/uniform_floor.py --smoke         # tiny-random; writes nothing
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS, SEEDS = 600, 3


def floor(model) -> dict:
    import torch

    head = model.get_output_embeddings().weight.detach().float()
    gain = model.model.norm.weight.detach().float()
    eps = model.config.rms_norm_eps
    vocab, width = head.shape
    best = None
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        h = torch.randn(width, requires_grad=True)
        optimizer = torch.optim.Adam([h], lr=0.05)
        for _ in range(STEPS):
            z = head @ (h * torch.rsqrt(h.pow(2).mean() + eps) * gain)
            excess = z.logsumexp(0) - z.mean() - math.log(vocab)
            optimizer.zero_grad()
            excess.backward()
            optimizer.step()
        if best is None or excess.item() < best[0]:
            best = (excess.item(), z.std().item(), z.detach())
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return {"vocab": vocab, "width": width, "tied": tied, "excess": best[0], "std": best[1], "logits": best[2]}


def changed_share(model, pairs, alpha, relative_top, assistant) -> float:
    """Teacher-forced on (question, answer) pairs: the share of answer tokens whose served argmax
    differs from the target's, the served logits being target - alpha * assistant(t, a), filtered."""
    from uld_kernels import logit_difference
    from uld_serve.eval.scoring import answer_batches

    changed = total = 0
    for b in answer_batches(model.tokenizer, pairs):
        t, a = (None if x is None else x.float() for x in model.score_parts(b.ids, b.mask, "forget", b.positions, b.prefix))
        served = logit_difference(t, assistant(t, a), alpha, relative_top, "serve")
        changed += int((served.argmax(-1) != t.argmax(-1)).sum())
        total += len(t)
    return changed / total


def greedy_with(model, questions, bias, alpha, relative_top) -> list:
    """Greedy answers (reference decoding) served as target - alpha * bias at every step, filtered."""
    import torch
    from general_fragility import MAX_TOKENS
    from transformers import LogitsProcessor, LogitsProcessorList

    from uld_kernels import logit_difference
    from uld_serve.core.tofu import chat_prompt_ids

    class Served(LogitsProcessor):
        def __call__(self, input_ids, scores):
            t = scores.float()
            return logit_difference(t, bias.to(t.device).expand_as(t), alpha, relative_top, "serve")

    tok, decoded = model.tokenizer, []
    for start in range(0, len(questions), 32):
        prompts = [chat_prompt_ids(tok, q) for q in questions[start:start + 32]]
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        with torch.no_grad():
            gen = model.target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_TOKENS, do_sample=False,
                                        logits_processor=LogitsProcessorList([Served()]), pad_token_id=tok.pad_token_id)
        decoded += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in gen]
    return decoded


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny-random target; writes nothing")
    args = parser.parse_args()

    from report import invocation, write_section

    from assistant_recipes import SIMPLE_FACTS
    from general_fragility import noisy_answers

    from uld_serve import demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.models import load_model, resolve_model
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.metrics import mean_rouge_l_recall
    from uld_serve.reference import UldModel

    limit = 2 if args.smoke else None
    if args.smoke:
        from repetition_penalty import smoke_models

        target, forget_set = smoke_models()
        targets = {"tiny-random": target}
    else:
        target, forget_set = demo.prepare_demo()
        targets = {"the demo's target": target, "SmolLM2-135M-Instruct": resolve_model("smollm2-135m-instruct")}
    manifest = read_manifest(forget_set)
    trained = {next(iter(targets)): manifest["result"]["retain_uniform_ce"]}
    alpha, relative_top = manifest["alpha"], manifest["relative_top"]
    lines = ["| target | V | hidden size | tied head | smallest excess uniform CE any hidden state reaches | "
             "std of those logits | the demo forget set's retain term, last batch |", "|---|---|---|---|---|---|---|"]
    floors = {label: floor(load_model(path)) for label, path in targets.items()}
    for label, f in floors.items():
        last = f"{trained[label] - math.log(f['vocab']):.2f}" if label in trained else "-"
        lines.append(f"| {label} | {f['vocab']} | {f['width']} | {'yes' if f['tied'] else 'no'} | {f['excess']:.3f} | "
                     f"{f['std']:.3f} | {last} |")

    model = UldModel(target, {"forget": str(forget_set)})
    general = [qa.question for qa in load_qa("general:heldout")[:limit]] + SIMPLE_FACTS[:limit]
    plain = noisy_answers(model, general, 0.0)
    general_pairs = list(zip(general, plain))
    forgotten = [(qa.question, qa.answer) for qa in load_qa(demo.FORGET)[:limit]]
    bias = floors[next(iter(targets))]["logits"]
    assistants = {"the floor's logits, the same at every position": lambda t, a: bias.to(t.device).expand_as(t),
                  "the demo's forget set (a)": lambda t, a: a,
                  "the demo's forget set less the floor's logits (a - b)": lambda t, a: a - bias.to(t.device)}
    lines += ["", f"Served on `{target.name}` at alpha {alpha:g}, r {relative_top:g} (the demo forget set's calibrated values for "
              f"a, not recalibrated for the others), teacher-forced: the share of answer tokens whose served argmax differs from the "
              f"target's, on the target's own greedy answers to {len(general)} general questions and simple facts (fewer is better) "
              f"and on the {len(forgotten)} forgotten answers (more is forgetting); greedy agreement (ROUGE-L, reference decoding, fp32) "
              "for the floor's logits:", "",
              "| assistant subtracted | general answer tokens changed | forgotten answer tokens changed | general + facts agreement |",
              "|---|---|---|---|"]
    floor_agreement = mean_rouge_l_recall(plain, greedy_with(model, general, bias, alpha, relative_top))
    for i, (label, assistant) in enumerate(assistants.items()):
        agreement = floor_agreement if i == 0 else None
        lines.append(f"| {label} | {changed_share(model, general_pairs, alpha, relative_top, assistant):.3f} | "
                     f"{changed_share(model, forgotten, alpha, relative_top, assistant):.3f} | "
                     f"{'-' if agreement is None else f'{agreement:.2f}'} |")
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        write_section("uniform-floor", "How uniform an assistant on SmolLM2 can be",
                      invocation(), text)


if __name__ == "__main__":
    main()
