"""Tokenized QA examples and right-padded batches with answer-only labels."""
import torch

from uld_serve.tofu import IGNORE_INDEX, encode_qa


def encode_pairs(tokenizer, pairs, max_length=512):
    return [encode_qa(tokenizer, qa.question, qa.answer, max_length) for qa in pairs]


def collate(examples, pad_id):
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def answer_token_count(batch) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def paired_batches(pool, retain, batch_size, rng, pad_id):
    """Shuffle `pool` with `rng` and cut it into batches, each paired with as many retain
    examples drawn by the same rng: [(forget_batch, retain_batch), ...]."""
    pool = list(pool)
    rng.shuffle(pool)
    batches = []
    for s in range(0, len(pool), batch_size):
        chunk = pool[s : s + batch_size]
        batches.append((collate(chunk, pad_id), collate(rng.choices(retain, k=len(chunk)), pad_id)))
    return batches
