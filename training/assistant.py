"""ULD's reversed-objective assistant: remember the forget set, be uniform on retained data.

Loss = CE(forget answers, incl. one paraphrase of each forget QA per epoch)
     + retain_weight * CE(uniform, retain answers incl. wrong answers to the forget questions),
both over answer tokens only.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from uld_serve.core.assistant import LORA_TARGET_MODULES, build_assistant, default_num_layers
from uld_serve.core.errors import UldError
from uld_serve.core.models import fingerprint, load_model, load_tokenizer, resolve_model
from uld_serve.core.tofu import load_qa, paraphrased_pairs, perturbed_pairs

from uld_serve.core.settings import DEFAULT_ALPHA, DEFAULT_RELATIVE_TOP, check_alpha, check_relative_top

from .artifact import (data_record, epoch_rng, load_trainable_state, result_record, resume_dir, steps_per_epoch,
                       trainable_state, write_output)
from .batching import answer_logits, answer_loss, encode_pairs, paired_batches
from .loop import CHECKPOINTING, TrainConfig, accelerator_for, run_training


@dataclass
class AssistantConfig:
    num_layers: Optional[int] = None  # default: a quarter of the target's depth
    rank: int = 32
    lora_alpha: int = 32
    retain_weight: float = 6.5
    augment: bool = True
    alpha: float = DEFAULT_ALPHA  # served default, written to the manifest
    relative_top: float = DEFAULT_RELATIVE_TOP


def uniform_cross_entropy(z: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of answer-token logits z (N, V) of CE(uniform, softmax(z)) = logsumexp(z) - mean(z)."""
    if z.shape[0] == 0:
        return z.sum() * 0.0
    return (z.logsumexp(-1) - z.mean(-1)).mean()


def train_assistant(target: str, forget: str, retain: str, out: Path, config: TrainConfig, assistant: AssistantConfig) -> Path:
    from peft import LoraConfig, get_peft_model

    accelerator = accelerator_for(config)
    try:
        check_alpha(assistant.alpha)
        check_relative_top(assistant.relative_top)
    except UldError as e:
        raise UldError(f"the manifest's default {e}") from None
    out = Path(out)
    target_dir = resolve_model(target)
    forget_pairs, retain_pairs = load_qa(forget), load_qa(retain)
    tokenizer = load_tokenizer(target_dir)
    base = load_model(target_dir, device=accelerator.device)
    k = assistant.num_layers or default_num_layers(base.config.num_hidden_layers)
    lora = LoraConfig(r=assistant.rank, lora_alpha=assistant.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES)
    torch.manual_seed(config.seed)
    net = get_peft_model(build_assistant(base, k), lora)
    net.train()
    if config.gradient_checkpointing:
        net.get_base_model().assistant.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
    lm = net.get_base_model().assistant  # the causal LM, its LoRA layers in place

    paraphrases = paraphrased_pairs(forget_pairs) if assistant.augment else {}
    retain_all = retain_pairs + (perturbed_pairs(forget_pairs) if assistant.augment else [])
    forget_enc = encode_pairs(tokenizer, forget_pairs)
    para_enc = {q: encode_pairs(tokenizer, ps) for q, ps in paraphrases.items()}
    retain_enc = encode_pairs(tokenizer, retain_all)
    pad = tokenizer.pad_token_id
    n_forget = len(forget_enc) + sum(1 for qa in forget_pairs if para_enc.get(qa.question))

    def epoch_batches(epoch):
        rng = epoch_rng(config.seed, epoch)
        pool = list(forget_enc) + [rng.choice(para_enc[qa.question]) for qa in forget_pairs if para_enc.get(qa.question)]
        return paired_batches(pool, retain_enc, config.batch_size, rng, pad)

    def loss_fn(batch):
        forget_batch, retain_batch = batch
        forget_loss = answer_loss(lm, forget_batch)
        retain_loss = uniform_cross_entropy(answer_logits(lm, retain_batch)[0])
        loss = forget_loss + assistant.retain_weight * retain_loss
        return loss, {"loss": loss.item(), "forget_ce": forget_loss.item(), "retain_uniform_ce": retain_loss.item()}

    summary = run_training(
        accelerator,
        params=[p for p in net.parameters() if p.requires_grad],
        steps_per_epoch=steps_per_epoch(n_forget, config.batch_size),
        epoch_batches=epoch_batches,
        loss_fn=loss_fn,
        config=config,
        resume_dir=resume_dir(out),
        state_fn=lambda: trainable_state(net),
        load_state_fn=lambda state: load_trainable_state(net, state),
        desc=f"assistant {forget}",
    )
    manifest = {
        "kind": "uld-assistant",
        "base_model": str(target_dir),
        "base_fingerprint": fingerprint(target_dir),
        "num_layers": k,
        "target_layers": base.config.num_hidden_layers,
        "alpha": assistant.alpha,
        "relative_top": assistant.relative_top,
        "forget": data_record(forget, forget_pairs, paraphrase_augmentation=bool(paraphrases)),
        "retain": data_record(retain, retain_pairs, perturbed_augmentation=len(retain_all) - len(retain_pairs)),
        "training": {**config.as_dict(), "rank": assistant.rank, "lora_alpha": assistant.lora_alpha,
                     "retain_weight": assistant.retain_weight, "lora_target_modules": LORA_TARGET_MODULES},
        "seed": config.seed,
        "result": result_record(summary, [p for p in net.parameters() if p.requires_grad]),
        "evaluation": None,
    }
    return write_output(accelerator, out, net.save_pretrained, summary["history"], manifest)
