"""ULD's reversed-objective assistant: remember the forget set, be uniform on retained data.

Loss = CE(forget answers, incl. one paraphrase of each forget QA per epoch)
     + retain_weight * CE(uniform, retain answers incl. wrong answers to the forget questions),
both over answer tokens only.
"""
import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from uld_serve.artifact import write_manifest
from uld_serve.assistant import LORA_TARGET_MODULES, build_assistant, default_num_layers
from uld_serve.atomic import atomic_dir
from uld_serve.errors import UldError
from uld_serve.models import fingerprint, load_model, load_tokenizer, resolve_model
from uld_serve.tofu import load_qa, paraphrased_pairs, perturbed_pairs

from .batching import answer_logits, answer_loss, encode_pairs, paired_batches
from .loop import TrainConfig, peak_rss_mib, run_training


@dataclass
class AssistantConfig:
    num_layers: Optional[int] = None  # default: a quarter of the target's depth
    rank: int = 32
    lora_alpha: int = 32
    retain_weight: float = 6.5
    augment: bool = True
    alpha: float = 0.75  # served default, written to the manifest
    relative_top: float = 0.01


def uniform_cross_entropy(z: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of answer-token logits z (N, V) of CE(uniform, softmax(z)) = logsumexp(z) - mean(z)."""
    if z.shape[0] == 0:
        return z.sum() * 0.0
    return (z.logsumexp(-1) - z.mean(-1)).mean()


def content_hash(pairs) -> str:
    digest = hashlib.sha256()
    for qa in pairs:
        digest.update(json.dumps([qa.question, qa.answer]).encode())
    return digest.hexdigest()


def train_assistant(target: str, forget: str, retain: str, out: Path, config: TrainConfig, assistant: AssistantConfig) -> Path:
    from peft import LoraConfig, get_peft_model

    config.validate()
    if not 0.0 < assistant.relative_top <= 1.0:
        raise UldError("--relative-top must be in (0, 1]")
    out = Path(out)
    target_dir = resolve_model(target)
    forget_pairs, retain_pairs = load_qa(forget), load_qa(retain)
    tokenizer = load_tokenizer(target_dir)
    base = load_model(target_dir)
    k = assistant.num_layers or default_num_layers(base.config.num_hidden_layers)
    lora = LoraConfig(r=assistant.rank, lora_alpha=assistant.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES)
    torch.manual_seed(config.seed)
    net = get_peft_model(build_assistant(base, k), lora)
    net.train()
    lm = net.get_base_model().assistant  # the causal LM, its LoRA layers in place

    paraphrases = paraphrased_pairs(forget_pairs) if assistant.augment else {}
    retain_all = retain_pairs + (perturbed_pairs(forget_pairs) if assistant.augment else [])
    forget_enc = encode_pairs(tokenizer, forget_pairs)
    para_enc = {q: encode_pairs(tokenizer, ps) for q, ps in paraphrases.items()}
    retain_enc = encode_pairs(tokenizer, retain_all)
    pad = tokenizer.pad_token_id
    n_forget = len(forget_enc) + sum(1 for qa in forget_pairs if para_enc.get(qa.question))
    steps_per_epoch = -(-n_forget // config.batch_size)

    def epoch_batches(epoch):
        rng = random.Random(config.seed * 100_003 + epoch)
        pool = list(forget_enc) + [rng.choice(para_enc[qa.question]) for qa in forget_pairs if para_enc.get(qa.question)]
        return paired_batches(pool, retain_enc, config.batch_size, rng, pad)

    def loss_fn(batch):
        forget_batch, retain_batch = batch
        forget_loss = answer_loss(lm, forget_batch)
        retain_loss = uniform_cross_entropy(answer_logits(lm, retain_batch)[0])
        loss = forget_loss + assistant.retain_weight * retain_loss
        return loss, {"loss": loss.item(), "forget_ce": forget_loss.item(), "retain_uniform_ce": retain_loss.item()}

    def lora_state():
        return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}

    def load_lora_state(state):
        params = dict(net.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)

    resume_dir = out.parent / f".{out.name}.resume"
    summary = run_training(
        params=[p for p in net.parameters() if p.requires_grad],
        steps_per_epoch=steps_per_epoch,
        epoch_batches=epoch_batches,
        loss_fn=loss_fn,
        config=config,
        resume_dir=resume_dir,
        state_fn=lora_state,
        load_state_fn=load_lora_state,
        desc=f"assistant {forget}",
    )
    last = summary["history"][-1] if summary["history"] else {}
    with atomic_dir(out) as tmp:
        net.save_pretrained(tmp)
        write_manifest(tmp, {
            "kind": "uld-assistant",
            "base_model": str(target_dir),
            "base_fingerprint": fingerprint(target_dir),
            "num_layers": k,
            "target_layers": base.config.num_hidden_layers,
            "alpha": assistant.alpha,
            "relative_top": assistant.relative_top,
            "forget": {"spec": forget, "num_examples": len(forget_pairs), "sha256": content_hash(forget_pairs),
                       "paraphrase_augmentation": bool(paraphrases)},
            "retain": {"spec": retain, "num_examples": len(retain_pairs), "sha256": content_hash(retain_pairs),
                       "perturbed_augmentation": len(retain_all) - len(retain_pairs)},
            "training": {**config.as_dict(), "rank": assistant.rank, "lora_alpha": assistant.lora_alpha,
                         "retain_weight": assistant.retain_weight, "lora_target_modules": LORA_TARGET_MODULES},
            "seed": config.seed,
            "result": {"steps": summary["steps"], "steps_per_epoch": summary["steps_per_epoch"], "wall_s": summary["wall_s"],
                       "precision": summary["precision"],
                       "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
                       "peak_rss_mib": peak_rss_mib(),
                       **{k_: v for k_, v in last.items() if k_ not in ("step", "epoch", "wall_s")}},
            "evaluation": None,
        })
        (tmp / "training_log.json").write_text(json.dumps(summary["history"]) + "\n")
    shutil.rmtree(resume_dir, ignore_errors=True)
    return out
