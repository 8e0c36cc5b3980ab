"""Tokenized QA examples, right-padded batches with answer-only labels, and the answer loss."""
import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule

from uld_serve.core.tofu import IGNORE_INDEX, SYSTEM_PROMPT, chat_prompt_ids, encode_answer

RUN = 16  # batches per length-sorted run


def encode_pairs(tokenizer, pairs, max_length=512, system=SYSTEM_PROMPT):
    """encode_qa of each pair; each distinct question's chat template is rendered once."""
    prompts = {q: chat_prompt_ids(tokenizer, q, system) for q in dict.fromkeys(qa.question for qa in pairs)}
    return [encode_answer(tokenizer, prompts[qa.question], qa.answer, max_length) for qa in pairs]


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


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1): True where a position's logit predicts an answer token."""
    return labels[:, 1:] != IGNORE_INDEX


def answer_token_count(batch) -> int:
    return int(answer_mask(batch["labels"]).sum())


def grouped_batches(examples, batch_size, rng) -> list:
    """Shuffle `examples` with `rng` and cut them into batches of similar lengths: each run of
    RUN batches is sorted by length before it is cut (random batches of TOFU QA carry much
    padding), and the batches' order is shuffled again."""
    pool = list(examples)
    rng.shuffle(pool)
    batches = []
    for start in range(0, len(pool), RUN * batch_size):
        run = sorted(pool[start : start + RUN * batch_size], key=lambda ex: len(ex[0]))
        batches += [run[i : i + batch_size] for i in range(0, len(run), batch_size)]
    rng.shuffle(batches)
    return batches


def paired_batches(pool, retain, batch_size, rng, pad_id):
    """Batches of `pool` (grouped_batches), each paired with as many retain examples drawn by
    the same rng: [(forget_batch, retain_batch), ...]."""
    forget = grouped_batches(pool, batch_size, rng)
    drawn = grouped_batches(rng.choices(retain, k=len(forget) * batch_size), batch_size, rng)
    return [(collate(f, pad_id), collate(r[: len(f)], pad_id)) for f, r in zip(forget, drawn)]


def logits_at(lm, batch, where: torch.Tensor) -> torch.Tensor:
    """fp32 logits (N, V) at the N places of a batch where `where` (B, T) is True: the LM head
    runs only there. `lm` is a causal LM or a peft model around one (its LoRA layers stay active)."""
    lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    if isinstance(lm, FSDPModule):  # sharded weights are gathered only inside the root's forward
        return lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[where].float()
    hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return lm.lm_head(hidden[where]).float()


def answer_logits(lm, batch) -> tuple:
    """(logits (N, V), tokens (N,)) at the N places of a right-padded batch whose logit predicts
    an answer token (half the positions of a TOFU batch)."""
    predicts = answer_mask(batch["labels"])
    return logits_at(lm, batch, F.pad(predicts, (0, 1))), batch["labels"][:, 1:][predicts]


def pad_to(batch, width: int, pad_id: int) -> dict:
    """The batch right-padded to at least `width` positions (padding masked, no labels)."""
    extra = width - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    return {"input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
            "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
            "labels": F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)}


def answer_loss(lm, batch) -> torch.Tensor:
    """Mean cross-entropy over answer tokens: what a Hugging Face causal LM returns as .loss."""
    return F.cross_entropy(*answer_logits(lm, batch))
