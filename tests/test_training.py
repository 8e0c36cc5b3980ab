import json
import math
import os
import random

import pytest
import torch

from uld_serve.core.errors import UldError
from uld_training.assistant import (REFERENCE_LENGTH, contender_cross_entropy, epoch_examples, retain_places,
                                    uniform_cross_entropy)
from uld_training.batching import answer_loss, collate, encode_pairs, grouped_batches, logits_at
from uld_training.loop import TrainConfig, accelerator_for, bf16_is_fast, run_training


def test_uniform_cross_entropy_by_hand():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # answer-token logits, V = 4
    expected = (math.log(4.0) + torch.logsumexp(torch.tensor([1.0, 0, 0, 0]), 0).item() - 0.25) / 2
    assert uniform_cross_entropy(z).item() == pytest.approx(expected)
    assert uniform_cross_entropy(torch.zeros(0, 4)).item() == 0.0


def test_contender_cross_entropy_covers_only_the_targets_likeliest_tokens():
    target = torch.tensor([[5.0, 4.0, 0.0, -1.0, 3.0]])  # likeliest: tokens 0, 1, 4
    z = torch.tensor([[2.0, 0.0, 9.0, 9.0, 1.0]])  # the assistant's logits
    expected = torch.logsumexp(torch.tensor([2.0, 0.0, 1.0]), 0).item() - 1.0
    assert contender_cross_entropy(z, target, 3).item() == pytest.approx(expected)
    flat = torch.tensor([[1.0, 1.0, 9.0, 9.0, 1.0]])  # uniform among the three, whatever elsewhere
    assert contender_cross_entropy(flat, target, 3).item() == pytest.approx(math.log(3))
    assert contender_cross_entropy(z, target, 50).item() == pytest.approx(uniform_cross_entropy(z).item())


def test_each_example_takes_one_prompt_form_per_epoch():
    fixed = [[("f0", "system"), ("f0", "none")], [("f1", "system"), ("f1", "none")]]
    drawn_from = [[[("p0", "system"), ("p0", "none")], [("q0", "system"), ("q0", "none")]]]
    retain = [[(f"r{i}", "system"), (f"r{i}", "none")] for i in range(20)]
    forms = set()
    for epoch in range(4):
        pool, kept = epoch_examples(fixed, drawn_from, retain, random.Random(epoch))
        assert [ex for ex, _ in pool[:2]] == ["f0", "f1"] and pool[2][0] in ("p0", "q0")  # every question once an epoch
        assert [ex for ex, _ in kept] == [f"r{i}" for i in range(20)]
        forms |= {form for _, form in pool + kept}
    assert forms == {"system", "none"}
    one = [[ex[0]] for ex in fixed], [[[o[0]] for o in opts] for opts in drawn_from], [[ex[0]] for ex in retain]
    rng, same = random.Random(7), random.Random(7)
    pool, kept = epoch_examples(*one, rng)
    assert pool[:2] == [ex[0] for ex in fixed] and kept == [ex[0] for ex in retain]
    assert pool[2] == [o[0] for o in drawn_from[0]][same.randrange(2)]  # one form: only the paraphrase was drawn
    assert rng.random() == same.random()


def test_retain_positions_follow_the_reference_codes_uniform_loss(tiny_base):
    """`all` is the reference's kl_div(log softmax, uniform, 'batchmean') over sequences padded to
    256 tokens (plus log V: CE = KL + entropy of the uniform); `prompt+answer` is the same mean
    with the padding's positions left out; `answer` covers the answer tokens only."""
    import torch.nn.functional as F

    from uld_serve.core.models import load_model, load_tokenizer
    from uld_serve.core.tofu import load_qa

    model, tokenizer = load_model(tiny_base), load_tokenizer(tiny_base)
    pad = tokenizer.pad_token_id
    batch = collate(encode_pairs(tokenizer, load_qa("tofu:retain90[:3]")), pad)
    log_v = math.log(model.config.vocab_size)

    def reference(input_ids, attention_mask, keep=None):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        probs = logits.softmax(-1).view(-1, logits.shape[-1])
        probs = probs if keep is None else probs[keep.view(-1)]
        return F.kl_div(probs.log(), torch.full_like(probs, 1 / probs.shape[-1]), reduction="batchmean").item()

    with torch.no_grad():
        padded = {k: F.pad(v, (0, REFERENCE_LENGTH - v.shape[1]), value=pad if k == "input_ids" else 0) for k, v in batch.items()
                  if k != "labels"}
        all_positions = logits_at(model, *retain_places(batch, "all", pad))
        assert all_positions.shape[0] == 3 * REFERENCE_LENGTH
        assert uniform_cross_entropy(all_positions).item() - log_v == pytest.approx(reference(**padded), rel=1e-4)
        real = logits_at(model, *retain_places(batch, "prompt+answer", pad))
        assert real.shape[0] == int(batch["attention_mask"].sum())
        real_reference = reference(batch["input_ids"], batch["attention_mask"], keep=batch["attention_mask"].bool())
        assert uniform_cross_entropy(real).item() - log_v == pytest.approx(real_reference, rel=1e-4)
        answers = logits_at(model, *retain_places(batch, "answer", pad))
        assert answers.shape[0] == int((batch["labels"][:, 1:] != -100).sum()) < real.shape[0]


def test_answer_loss_equals_the_models_own_loss(tiny_base):
    from uld_serve.core.models import load_model, load_tokenizer
    from uld_serve.core.tofu import load_qa

    model, tokenizer = load_model(tiny_base), load_tokenizer(tiny_base)
    batch = collate(encode_pairs(tokenizer, load_qa("tofu:forget01[:5]")), tokenizer.pad_token_id)
    assert answer_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-5)


def test_unlearning_steps_see_the_full_forwards_answer_rows_with_and_without_lora(tiny_base):
    import contextlib

    from peft import LoraConfig, get_peft_model

    from uld_serve.core.models import load_model, load_tokenizer
    from uld_serve.core.tofu import load_qa
    from uld_training.unlearn import Step

    tokenizer = load_tokenizer(tiny_base)
    forget = collate(encode_pairs(tokenizer, load_qa("tofu:forget01[:3]")), tokenizer.pad_token_id)
    retain = collate(encode_pairs(tokenizer, load_qa("tofu:full[:4]")), tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(load_model(tiny_base), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))

    @contextlib.contextmanager
    def reference():
        with model.disable_adapter():
            yield model

    step = Step(model, forget, retain, reference)
    for which, batch in (("forget", forget), ("retain", retain)):
        mask = batch["labels"][:, 1:] != -100
        with torch.no_grad():
            full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
            with model.disable_adapter():
                plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
        assert torch.allclose(step.logits(which), full, atol=1e-5)
        assert torch.allclose(step.reference_logits(which), plain, atol=1e-5)
        assert not torch.allclose(full, plain, atol=1e-3)  # the LoRA is live in one and off in the other


def test_grouped_batches_hold_every_example_once_with_less_padding():
    lengths = random.Random(0).choices(range(40, 150), k=203)
    examples = [(list(range(n)), [i]) for i, n in enumerate(lengths)]  # the label names the example
    batches = grouped_batches(examples, 8, random.Random(1))
    assert sorted(ex[1][0] for b in batches for ex in b) == list(range(203))
    assert [[ex[1] for ex in b] for b in batches] == [[ex[1] for ex in b] for b in grouped_batches(examples, 8, random.Random(1))]
    shuffled = random.Random(1).sample(examples, len(examples))
    plain = [shuffled[i : i + 8] for i in range(0, len(shuffled), 8)]
    padded = lambda bs: sum(len(b) * max(len(ex[0]) for ex in b) for b in bs)  # noqa: E731
    assert padded(batches) < 0.85 * padded(plain)


class Crash(Exception):
    pass


def _train(tmp_path, crash_at=None, steps=6, precision="fp32"):
    config = TrainConfig(lr=0.1, epochs=3, batch_size=1, max_steps=steps, save_every=2, precision=precision)
    accelerator = accelerator_for(config)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(3, device=accelerator.device))
    data = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).to(accelerator.device)
    calls = []

    def loss_fn(batch):
        if crash_at is not None and len(calls) == crash_at:
            raise Crash()
        calls.append(batch)
        loss = ((weight - batch) ** 2).sum()
        return loss, {"loss": loss.item()}

    summary = run_training(accelerator, [weight], 2, lambda e: [data[(2 * e) % 4], data[(2 * e + 1) % 4]], loss_fn, config,
                           tmp_path, lambda: {"w": weight.detach().clone()}, lambda s: weight.data.copy_(s["w"]), "test")
    return weight.detach(), summary, calls


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    straight, _, _ = _train(tmp_path / "a")
    with pytest.raises(Crash):
        _train(tmp_path / "b", crash_at=5)
    resumed, summary, calls = _train(tmp_path / "b")
    assert len(calls) == 2  # steps 5 and 6 only: 4 were checkpointed
    assert summary["steps"] == 6
    assert torch.equal(resumed, straight)


def test_jobs_run_where_the_tests_run():
    """auto is the GPU under ULD_TEST_DEVICE=cuda and the CPU otherwise (conftest.py hides the GPU)."""
    device = accelerator_for(TrainConfig(precision="fp32")).device
    assert device.type == os.environ["ULD_TEST_DEVICE"]


def test_bad_training_settings():
    with pytest.raises(UldError, match="precision"):
        TrainConfig(precision="fp8").validate()
    with pytest.raises(UldError, match="--max-steps"):
        TrainConfig(max_steps=0).validate()


def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(tmp_path):
    # On AVX2-only CPUs bf16 autocast ran ~100x slower than fp32 (BENCHMARKS.md), so the
    # default must not pick it there; the run records what it actually used.
    assert TrainConfig().precision == "auto"
    _, summary, _ = _train(tmp_path, steps=2, precision="auto")
    assert summary["precision"] == ("bf16" if os.environ["ULD_TEST_DEVICE"] == "cuda" or bf16_is_fast() else "fp32")
    _, summary, _ = _train(tmp_path / "b", steps=2, precision="fp32")
    assert summary["precision"] == "fp32"


@pytest.mark.parametrize("job", ["finetune", "assistant", "npo"])
def test_gradient_checkpointing_changes_memory_not_results(job, tiny_target, tmp_path, monkeypatch):
    import transformers.modeling_utils

    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.finetune import finetune
    from uld_training.unlearn.run import Trainable, unlearn

    recomputed = []  # transformers wraps each decoder layer in torch.utils.checkpoint.checkpoint
    original = transformers.modeling_utils.checkpoint
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", lambda *a, **k: recomputed.append(1) or original(*a, **k))

    def losses(checkpointing):
        config = TrainConfig(max_steps=2, batch_size=4, lr=5e-3, precision="fp32", gradient_checkpointing=checkpointing)
        out = tmp_path / f"{job}-{checkpointing}"
        if job == "finetune":
            finetune(str(tiny_target), "tofu:forget01", out, config)
        elif job == "npo":
            unlearn("npo", {}, str(tiny_target), "tofu:forget01", "tofu:retain90[:20]", out, config, Trainable(rank=8, lora_alpha=8))
        else:
            train_assistant(str(tiny_target), "tofu:forget01", "tofu:retain90[:20]", out, config, AssistantConfig(num_layers=2))
        return [row["loss"] for row in json.loads((out / "training_log.json").read_text())]

    plain = losses(False)
    assert not recomputed
    assert losses(True) == pytest.approx(plain, rel=1e-5)
    assert recomputed  # the decoder layers ran under the checkpoint
