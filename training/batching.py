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
