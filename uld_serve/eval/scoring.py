"""Per-sample statistics from model forward passes and greedy answers."""
import torch

from ..reference import GenerationRequest
from ..tofu import IGNORE_INDEX, chat_prompt_ids, encode_qa


def score_pairs(model, pairs, forget_set=None, alpha=None, relative_top=None, batch_size=8, progress=None):
    """For each (question, answer): mean answer-token loss (EOS included, as open-unlearning),
    and the log-prob and greedy-match of each answer token before EOS (for min-k and ES)."""
    tokenizer = model.tokenizer
    encoded = [encode_qa(tokenizer, q, a) for q, a in pairs]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), IGNORE_INDEX)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq, lab = encoded[i]
            ids[row, : len(seq)], labels[row, : len(lab)], mask[row, : len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
        logits = model.score_logits(ids, mask, forget_set, alpha, relative_top)[:, :-1]
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = labels[:, 1:]
        for row, i in enumerate(chunk):
            positions = (targets[row] != IGNORE_INDEX).nonzero().squeeze(-1)
            tokens = targets[row, positions]
            token_lp = logprobs[row, positions].gather(-1, tokens[:, None]).squeeze(-1)
            matches = logprobs[row, positions].argmax(-1) == tokens
            results[i] = {
                "avg_loss": float(-token_lp.mean()) if len(positions) else None,
                "token_logprobs": token_lp[:-1].tolist(),
                "matches": matches[:-1].tolist(),
            }
        if progress is not None:
            progress(len(chunk))
    return results


def greedy_answers(generator, questions, forget_set=None, alpha=None, relative_top=None, max_new_tokens=200, batch_size=32, progress=None):
    """`generator`: the reference UldModel or the vLLM UldEngine (same generate signature)."""
    requests = [
        GenerationRequest(chat_prompt_ids(generator.tokenizer, q), forget_set, alpha, relative_top, max_new_tokens)
        for q in questions
    ]
    outputs = generator.generate(requests, batch_size=batch_size, progress=progress)
    return [generator.tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in outputs]
