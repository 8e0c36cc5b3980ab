"""Per-sample statistics from model forward passes and greedy answers."""
import math

import torch

from ..reference import GenerationRequest
from ..tofu import IGNORE_INDEX, chat_prompt_ids, encode_qa


def answer_batches(tokenizer, pairs, batch_size=8):
    """Right-padded batches of (question, answer) pairs, shortest first. Yields (indices of the
    pairs, input_ids, attention_mask, positions, tokens, counts): `positions` (B, T) marks the
    places whose logits predict an answer token, `tokens` those tokens in row-major order,
    `counts` how many each row has."""
    encoded = [encode_qa(tokenizer, q, a) for q, a in pairs]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), IGNORE_INDEX)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq, lab = encoded[i]
            ids[row, : len(seq)], labels[row, : len(lab)], mask[row, : len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
        positions = torch.zeros_like(labels, dtype=torch.bool)  # position p predicts token p + 1
        positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        yield chunk, ids, mask, positions, labels[:, 1:][positions[:, :-1]], positions.sum(-1).tolist()


def score_pairs(model, pairs, forget_set=None, alpha=None, relative_top=None, batch_size=8, progress=None, mode="score"):
    """For each (question, answer): mean answer-token loss (EOS included, as open-unlearning),
    and the log-prob and greedy-match of each answer token before EOS (for min-k and ES).
    Logits are computed only where they predict an answer token."""
    results = [None] * len(pairs)
    for chunk, ids, mask, positions, tokens, counts in answer_batches(model.tokenizer, pairs, batch_size):
        logits = model.score_logits(ids, mask, forget_set, alpha, relative_top, positions=positions, mode=mode)
        logprobs = torch.log_softmax(logits, dim=-1)
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


def greedy_answers(generator, questions, forget_set=None, alpha=None, relative_top=None, max_new_tokens=200, batch_size=32, progress=None):
    """`generator`: the reference UldModel or the vLLM UldEngine (same generate signature)."""
    requests = [
        GenerationRequest(chat_prompt_ids(generator.tokenizer, q), forget_set, alpha, relative_top, max_new_tokens)
        for q in questions
    ]
    outputs = generator.generate(requests, batch_size=batch_size, progress=progress)
    return [generator.tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in outputs]
