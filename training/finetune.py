"""Full fine-tune on TOFU QA: the target (tofu:full) and the retain reference (tofu:retain90)."""
from pathlib import Path

from uld_serve.core.models import fingerprint, load_model, load_tokenizer, resolve_model
from uld_serve.core.tofu import load_qa

from .artifact import epoch_rng, resume_dir, steps_per_epoch, write_output
from .batching import answer_loss, collate, encode_pairs, grouped_batches
from .loop import CHECKPOINTING, TrainConfig, accelerator_for, run_training
from .sharding import checkpoint_fns, gathered, shard

MODEL_CARD = "uld_model.json"


def shuffled_batches(examples, batch_size, seed, epoch, pad_id):
    return [collate(b, pad_id) for b in grouped_batches(examples, batch_size, epoch_rng(seed, epoch))]


def finetune(model: str, data: str, out: Path, config: TrainConfig) -> Path:
    accelerator = accelerator_for(config)
    out = Path(out)
    base_dir = resolve_model(model)
    pairs = load_qa(data)
    tokenizer = load_tokenizer(base_dir)
    net = load_model(base_dir, device=accelerator.device)
    net.train()
    if config.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
    if config.fsdp:
        shard(net, accelerator.device, accelerator.mixed_precision == "bf16")
    examples = encode_pairs(tokenizer, pairs)

    def loss_fn(batch):
        loss = answer_loss(net, batch)
        return loss, {"loss": loss.item()}

    state_fn, load_state_fn = checkpoint_fns(net, net.state_dict, net.load_state_dict)
    summary = run_training(
        accelerator,
        params=[p for p in net.parameters() if p.requires_grad],
        steps_per_epoch=steps_per_epoch(len(examples), config.batch_size),
        epoch_batches=lambda e: shuffled_batches(examples, config.batch_size, config.seed, e, tokenizer.pad_token_id),
        loss_fn=loss_fn,
        config=config,
        resume_dir=resume_dir(out),
        state_fn=state_fn,
        load_state_fn=load_state_fn,
        desc=f"finetune {data}",
        sharded_model=net if config.fsdp else None,
    )
    net.eval()
    card = {
        "base_model": str(base_dir),
        "base_fingerprint": fingerprint(base_dir),
        "data": data,
        "num_examples": len(pairs),
        "config": config.as_dict(),
        "steps": summary["steps"],
        "precision": summary["precision"],
        "device": str(accelerator.device),
        "processes": summary["processes"],
        "wall_s": summary["wall_s"],
        "final_loss": summary["history"][-1]["loss"] if summary["history"] else None,
        "history": summary["history"],
    }

    weights = gathered(net)  # every process takes part in gathering a sharded model

    def save(directory):
        net.save_pretrained(directory, state_dict=weights)
        tokenizer.save_pretrained(directory)

    return write_output(accelerator, out, save, summary["history"], extra_files={MODEL_CARD: card})
