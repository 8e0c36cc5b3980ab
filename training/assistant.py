"""ULD's reversed-objective assistant: remember the forget set, be uniform on retained data.

Loss = CE(forget answers and their paraphrases) + retain_weight * CE(uniform, retain positions),
where the retain data holds wrong answers to the forget questions too. Two recipes:

- `answer-only` (the default): the retain term averages over answer tokens; one random
  paraphrase pair per forget question and epoch; all three wrong answers; LoRA r 32, no dropout.
- `reference`: what ULD's released code trains (github.com/UCSB-NLP-Chang/ULD,
  `configs/unlearn_loss/remember+uniform.yaml`, `uld/data/tofu.py`): the retain term covers
  every position of prompt and answer; the first two (paraphrased question, paraphrased
  answer) pairs of each forget question every epoch; two wrong answers each; LoRA r 16,
  alpha 32, dropout 0.05. What still differs from that code:
  - padding is left out: the reference averages over sequences padded to 256 tokens, padding
    included, with weight 5.0; the mean over real positions with weight 5.0 x 72 / 256 = 1.4
    (72: TOFU's mean length under SmolLM2's chat template) gives each real position its weight
    (`--retain-positions all` keeps the padding, with weight 5.0);
  - each batch pairs forget and retain examples one to one (the reference shuffles both into
    one pool and splits each batch by label);
  - retain examples come from the whole retain spec (the reference takes the last 400 of retain90);
  - paraphrase pairs are taken in file order (the reference takes them from a Python set,
    whose order changes with the hash seed);
  - the target's own chat template formats the prompts (the reference uses Llama-2's).

Questions are put under TOFU's system prompt, as its data and metrics use them; with
`--prompt-forms system,none` also with no system message, as a chat request often sends them
(each example takes one form drawn per epoch): an assistant trained under one form only can
fail to forget under the other (BENCHMARKS.md, "A forget set trained longer").

Either recipe may add a term of ours, not the paper's (`--contender-weight`, default off): at
the same retain places, CE(uniform, the assistant's softmax over the target's M likeliest
tokens), the target's logits computed without gradient. See contender_cross_entropy.
"""
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from uld_serve.core.assistant import LORA_TARGET_MODULES, build_assistant, default_num_layers
from uld_serve.core.errors import UldError
from uld_serve.core.models import fingerprint, load_model, load_tokenizer, resolve_model
from uld_serve.core.tofu import PROMPT_FORMS, check_prompt_forms, load_qa, paraphrased_pairs, perturbed_pairs

from uld_serve.core.settings import DEFAULT_ALPHA, DEFAULT_RELATIVE_TOP, SERVED_PENALTIES, check_alpha, check_relative_top

from .artifact import (data_record, epoch_rng, load_trainable_state, result_record, resume_dir, steps_per_epoch,
                       trainable_state, write_output)
from .batching import answer_loss, answer_mask, encode_pairs, logits_at, pad_to, paired_batches
from .loop import CHECKPOINTING, TrainConfig, accelerator_for, run_training

RETAIN_POSITIONS = ("answer", "prompt+answer", "all")
REFERENCE_LENGTH = 256  # the reference pads every sequence to this many tokens


@dataclass(frozen=True)
class Recipe:
    rank: int
    lora_alpha: int
    lora_dropout: float
    retain_weight: float
    retain_positions: str
    crossed_paraphrases: int  # 0: one random paraphrase pair per question and epoch; n: the first n crossed pairs, every epoch
    wrong_answers: Optional[int]  # wrong answers per forget question in the retain data (None: all)
    contender_weight: float = 0.0  # weight of contender_cross_entropy at the retain places (0: off)
    contenders: int = 16


RECIPES = {
    "answer-only": Recipe(32, 32, 0.0, 6.5, "answer", 0, None),
    "reference": Recipe(16, 32, 0.05, 1.4, "prompt+answer", 2, 2),
}


@dataclass
class AssistantConfig:
    num_layers: Optional[int] = None  # default: a quarter of the target's depth
    recipe: str = "answer-only"
    # None: the recipe's value
    rank: Optional[int] = None
    lora_alpha: Optional[int] = None
    lora_dropout: Optional[float] = None
    retain_weight: Optional[float] = None
    retain_positions: Optional[str] = None
    crossed_paraphrases: Optional[int] = None
    wrong_answers: Optional[int] = None
    contender_weight: Optional[float] = None
    contenders: Optional[int] = None
    augment: bool = True
    # the chat prompt forms the questions are trained under (core/tofu.py PROMPT_FORMS); with
    # several, each example takes one drawn per epoch, so an epoch keeps its length
    prompt_forms: tuple = ("system",)
    alpha: float = DEFAULT_ALPHA  # served default, written to the manifest
    relative_top: float = DEFAULT_RELATIVE_TOP
    repetition_penalty: Optional[float] = None  # served default, written to the manifest when given
    frequency_penalty: Optional[float] = None  # likewise

    def resolved(self) -> Recipe:
        """The recipe with this config's explicit values in place; bad values raise UldError."""
        if self.recipe not in RECIPES:
            raise UldError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        chosen = {k: getattr(self, k) for k in ("rank", "lora_alpha", "lora_dropout", "retain_weight", "retain_positions",
                                                    "crossed_paraphrases", "wrong_answers", "contender_weight", "contenders")
                  if getattr(self, k) is not None}
        recipe = replace(RECIPES[self.recipe], **chosen)
        if recipe.retain_positions not in RETAIN_POSITIONS:
            raise UldError(f"--retain-positions must be one of {', '.join(RETAIN_POSITIONS)}, got {recipe.retain_positions!r}")
        if not 0 <= recipe.lora_dropout < 1:
            raise UldError(f"--lora-dropout must be in [0, 1), got {recipe.lora_dropout}")
        if recipe.rank < 1 or recipe.lora_alpha < 1 or recipe.retain_weight < 0:
            raise UldError("--rank and --lora-alpha must be at least 1 and --retain-weight not negative")
        if recipe.crossed_paraphrases < 0 or (recipe.wrong_answers is not None and recipe.wrong_answers < 1):
            raise UldError("--crossed-paraphrases must not be negative and --wrong-answers must be at least 1")
        if recipe.contender_weight < 0 or recipe.contenders < 2:
            raise UldError("--contender-weight must not be negative and --contenders must be at least 2")
        return recipe


def uniform_cross_entropy(z: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of logits z (N, V) of CE(uniform, softmax(z)) = logsumexp(z) - mean(z)."""
    if z.shape[0] == 0:
        return z.sum() * 0.0
    return (z.logsumexp(-1) - z.mean(-1)).mean()


def retain_places(batch, positions: str, pad_id: int) -> tuple:
    """(batch, where): the places the retain term makes uniform: answer tokens, every real
    position, or every position of the batch padded to REFERENCE_LENGTH."""
    if positions == "answer":
        return batch, F.pad(answer_mask(batch["labels"]), (0, 1))
    if positions == "prompt+answer":
        return batch, batch["attention_mask"].bool()
    padded = pad_to(batch, REFERENCE_LENGTH, pad_id)
    return padded, torch.ones_like(padded["attention_mask"], dtype=torch.bool)


def contender_cross_entropy(z: torch.Tensor, target_logits: torch.Tensor, contenders: int) -> torch.Tensor:
    """Mean over rows of CE(uniform, softmax of z restricted to the target's `contenders`
    likeliest tokens). Served greedy answers change only where the assistant prefers one of the
    target's close candidates over another; the full-vocabulary uniform term spreads its push over
    every token, this one spends it where the served argmax is decided."""
    top = target_logits.topk(min(contenders, target_logits.shape[-1]), dim=-1).indices
    return uniform_cross_entropy(z.gather(1, top))


def epoch_examples(fixed: list, drawn_from: list, retain: list, rng) -> tuple:
    """(forget pool, retain pool) of one epoch. Every example is a list of its encodings, one per
    prompt form: each example takes one form drawn by rng, and each question in drawn_from one of
    its paraphrases. With one form nothing is drawn for forms, so the rng's sequence and the
    batches are those of a run without prompt forms."""
    form = (lambda encodings: encodings[0]) if all(len(ex) == 1 for ex in fixed) else rng.choice
    pool = [form(ex) for ex in fixed] + [form(rng.choice(options)) for options in drawn_from]
    return pool, [form(ex) for ex in retain]


def train_assistant(target: str, forget: str, retain: str, out: Path, config: TrainConfig, assistant: AssistantConfig) -> Path:
    from peft import LoraConfig, get_peft_model

    accelerator = accelerator_for(config)
    try:
        check_alpha(assistant.alpha)
        check_relative_top(assistant.relative_top)
        for key, check in SERVED_PENALTIES.items():
            if getattr(assistant, key) is not None:
                check(getattr(assistant, key))
    except UldError as e:
        raise UldError(f"the manifest's default {e}") from None
    recipe = assistant.resolved()
    prompt_forms = check_prompt_forms(assistant.prompt_forms)
    out = Path(out)
    target_dir = resolve_model(target)
    forget_pairs, retain_pairs = load_qa(forget), load_qa(retain)
    tokenizer = load_tokenizer(target_dir)
    base = load_model(target_dir, device=accelerator.device)
    k = assistant.num_layers or default_num_layers(base.config.num_hidden_layers)
    lora = LoraConfig(r=recipe.rank, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules=LORA_TARGET_MODULES)
    torch.manual_seed(config.seed)
    net = get_peft_model(build_assistant(base, k), lora)
    net.train()
    if config.gradient_checkpointing:
        net.get_base_model().assistant.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
    lm = net.get_base_model().assistant  # the causal LM, its LoRA layers in place

    paraphrases = paraphrased_pairs(forget_pairs, crossed=recipe.crossed_paraphrases > 0) if assistant.augment else {}
    retain_all = retain_pairs + (perturbed_pairs(forget_pairs, recipe.wrong_answers) if assistant.augment else [])

    def encoded(pairs):  # each example as a list of its encodings, one per prompt form
        return [list(forms) for forms in zip(*(encode_pairs(tokenizer, pairs, system=PROMPT_FORMS[f]) for f in prompt_forms))]

    forget_enc = encoded(forget_pairs)
    para_enc = {q: encoded(ps) for q, ps in paraphrases.items()}
    retain_enc = encoded(retain_all)
    pad = tokenizer.pad_token_id
    fixed = list(forget_enc) + [ex for qa in forget_pairs for ex in para_enc.get(qa.question, [])[:recipe.crossed_paraphrases]]
    drawn_from = [] if recipe.crossed_paraphrases else [para_enc[qa.question] for qa in forget_pairs if para_enc.get(qa.question)]

    def epoch_batches(epoch):
        rng = epoch_rng(config.seed, epoch)
        pool, retain = epoch_examples(fixed, drawn_from, retain_enc, rng)
        return paired_batches(pool, retain, config.batch_size, rng, pad)

    def loss_fn(batch):
        forget_batch, retain_batch = batch
        forget_loss = answer_loss(lm, forget_batch)
        places = retain_places(retain_batch, recipe.retain_positions, pad)
        z = logits_at(lm, *places)
        retain_loss = uniform_cross_entropy(z)
        loss = forget_loss + recipe.retain_weight * retain_loss
        logged = {"forget_ce": forget_loss.item(), "retain_uniform_ce": retain_loss.item()}
        if recipe.contender_weight:
            with torch.no_grad():
                target_logits = logits_at(base, *places)
            contender_loss = contender_cross_entropy(z, target_logits, recipe.contenders)
            loss = loss + recipe.contender_weight * contender_loss
            logged["retain_contender_ce"] = contender_loss.item()
        return loss, {"loss": loss.item(), **logged}

    summary = run_training(
        accelerator,
        params=[p for p in net.parameters() if p.requires_grad],
        steps_per_epoch=steps_per_epoch(len(fixed) + len(drawn_from), config.batch_size),
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
        **{key: getattr(assistant, key) for key in SERVED_PENALTIES if getattr(assistant, key) is not None},
        "forget": data_record(forget, forget_pairs, paraphrase_augmentation=bool(paraphrases)),
        "retain": data_record(retain, retain_pairs, perturbed_augmentation=len(retain_all) - len(retain_pairs)),
        "training": {**config.as_dict(), "recipe": assistant.recipe, **asdict(recipe), "prompt_forms": list(prompt_forms),
                     "lora_target_modules": LORA_TARGET_MODULES},
        "seed": config.seed,
        "result": result_record(summary, [p for p in net.parameters() if p.requires_grad]),
        "evaluation": None,
    }
    return write_output(accelerator, out, net.save_pretrained, summary["history"], manifest)
