"""Per-sample statistics from model forward passes and greedy answers."""
import math
from typing import Iterator, NamedTuple, Optional

import torch

from ..core.requests import GenerationRequest, Prefix
from ..core.tofu import IGNORE_INDEX, SYSTEM_PROMPT, chat_prompt_ids, encode_qa

SCORE_BATCH = 16  # answers per forward: the fastest of those timed (BENCHMARKS.md, TOFU scoring with shared prompts)


class AnswerBatch(NamedTuple):
    indices: list  # the pairs in this batch, in row order
    ids: torch.Tensor  # (B, T) right-padded rows: whole sequences, or continuations of `prefix`
    mask: torch.Tensor
    positions: torch.Tensor  # (B, T) bool: the places whose logits predict an answer token
    tokens: torch.Tensor  # those tokens, in row-major order
    counts: list  # how many each row has
    prefix: Optional[Prefix]


def answer_batches(tokenizer, pairs, batch_size=SCORE_BATCH, share_prompts=True) -> Iterator[AnswerBatch]:
    """Batches of about `batch_size` (question, answer) pairs, shortest first. With
    `share_prompts`, the pairs of one question stay in one batch and its prompt runs once: each
    row is the prompt's last token, then the answer, continuing the rest of the prompt (TOFU
    scores 7 answers per question, so this skips ~40% of the tokens)."""
    groups = {}  # key -> (prompt ids, [(pair index, answer ids)])
    for i, (q, a) in enumerate(pairs):
        ids, labels = encode_qa(tokenizer, q, a)
        n = next((j for j, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))
        groups.setdefault(tuple(ids[:n]) if share_prompts else i, (ids[:n], []))[1].append((i, ids[n:]))
    batch, size = [], 0
    for group in sorted(groups.values(), key=lambda g: len(g[0]) + max(len(ans) for _, ans in g[1])):
        if batch and size + len(group[1]) > batch_size:
            yield _answer_batch(tokenizer.pad_token_id, batch, share_prompts)
            batch, size = [], 0
        batch.append(group)
        size += len(group[1])
    if batch:
        yield _answer_batch(tokenizer.pad_token_id, batch, share_prompts)


def _answer_batch(pad_id, groups, share_prompts) -> AnswerBatch:
    # each row: (which prompt, the tokens before the answer, pair index, answer ids)
    rows = [(k, prompt[-1:] if share_prompts else prompt, i, ans)
            for k, (prompt, members) in enumerate(groups) for i, ans in members]
    prefix = None
    if share_prompts:
        prefix = Prefix(*_right_padded([prompt[:-1] for prompt, _ in groups], pad_id), torch.tensor([k for k, *_ in rows]))
    ids, mask = _right_padded([start + ans for _, start, _, ans in rows], pad_id)
    positions = torch.zeros_like(ids, dtype=torch.bool)  # position p predicts token p + 1
    for row, (_, start, _, ans) in enumerate(rows):
        positions[row, len(start) - 1 : len(start) - 1 + len(ans)] = True
    tokens = torch.tensor([t for *_, ans in rows for t in ans], dtype=torch.long)
    return AnswerBatch([i for _, _, i, _ in rows], ids, mask, positions, tokens, [len(ans) for *_, ans in rows], prefix)


def _right_padded(seqs, pad_id):
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def score_pairs(model, pairs, forget_set=None, alpha=None, relative_top=None, batch_size=SCORE_BATCH, progress=None, mode="score",
                share_prompts=True):
    """For each (question, answer): mean answer-token loss (EOS included, as open-unlearning),
    and the log-prob and greedy-match of each answer token before EOS (for min-k and ES).
    Logits are computed only where they predict an answer token; pairs with the same question
    share its prompt's forward (`share_prompts`; the results equal separate forwards to fp32 rounding)."""
    results = [None] * len(pairs)
    for chunk, ids, mask, positions, tokens, counts, prefix in answer_batches(model.tokenizer, pairs, batch_size, share_prompts):
        logits = model.score_logits(ids, mask, forget_set, alpha, relative_top, positions=positions, mode=mode, prefix=prefix)
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = tokens.to(logprobs.device)
        token_lp = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
        matches = logprobs.argmax(-1) == tokens
        for i, lp, match in zip(chunk, token_lp.split(counts), matches.split(counts)):
            results[i] = {
                "avg_loss": float(-lp.mean()) if len(lp) else None,
                "token_logprobs": lp[:-1].tolist(),
                "matches": match[:-1].tolist(),
            }
        if progress is not None:
            progress(len(chunk))
    return results


def mean_probability(losses) -> float:
    """open-unlearning's Q_A_Prob over pairs: the mean of exp(-mean answer-token loss)."""
    return sum(math.exp(-x) for x in losses) / len(losses)


def mean_answer_probability(model, pairs, forget_set=None, progress=None) -> float:
    """Q_A_Prob of a model (or target + forget set, at its default alpha) on `pairs`."""
    return mean_probability([r["avg_loss"] for r in score_pairs(model, pairs, forget_set, progress=progress)])


def greedy_answers(generator, questions, forget_set=None, alpha=None, relative_top=None, max_new_tokens=200, batch_size=32, progress=None,
                   system=SYSTEM_PROMPT):
    """`generator`: the reference UldModel or the vLLM UldEngine (same generate signature);
    system=None asks without a system message."""
    requests = [
        GenerationRequest(chat_prompt_ids(generator.tokenizer, q, system), forget_set, alpha=alpha, relative_top=relative_top,
                          max_new_tokens=max_new_tokens)
        for q in questions
    ]
    outputs = generator.generate(requests, batch_size=batch_size, progress=progress)
    return [generator.tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in outputs]
