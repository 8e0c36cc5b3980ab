"""G-effect diagnostics (Wang et al. 2025): how an unlearning objective moves the risk.

For data D with risk R_D (mean NLL of its answers) and an objective whose update follows
the gradient g_L, the G-effect is  e_D = g_L . grad R_D : a step of size lr changes R_D by
about -lr * e_D. A negative G-effect on forget data means the step raises the forget
risk (it unlearns); a negative one on retained data means it damages them. It is computed
per layer group (embeddings, each decoder layer, final norm/head) over the trainable
parameters, every `every` steps, on fixed probe batches of forget and retain answers.
"""
import json
import re
from pathlib import Path

import torch

from uld_serve.core.atomic import atomic_dir
from uld_serve.core.errors import UldError
from uld_serve.core.models import load_tokenizer, resolve_model
from uld_serve.core.tofu import load_qa

from .batching import collate, encode_pairs
from .loop import launched, to_device
from .unlearn import Step
from .unlearn.objectives import mean_nll
from .unlearn.run import unlearn


def layer_group(name: str) -> str:
    found = re.search(r"layers\.(\d+)\.", name)
    if found:
        return f"layer {int(found.group(1)):02d}"
    return "embeddings" if "embed" in name else "norm/head"


class Probe:
    """Fixed forget and retain probe batches, and the G-effects measured on them."""

    def __init__(self, tokenizer, forget: str, retain: str, size: int, every: int):
        pad = tokenizer.pad_token_id
        self.forget = collate(encode_pairs(tokenizer, load_qa(forget)[:size]), pad)
        self.retain = collate(encode_pairs(tokenizer, load_qa(retain)[:size]), pad)
        self.every, self.records = every, []

    def __call__(self, step_index, model, method, reference):
        if step_index % self.every:
            return
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        device = params[0].device
        step = Step(model, to_device(self.forget, device), to_device(self.retain, device), reference)
        # the risks reuse the objective's forward passes, so its graph is kept for them
        objective = method.objective_gradient(method.terms(step), params, retain_graph=True)
        record = {"step": step_index}
        for which in ("forget", "retain"):
            risk = mean_nll(step.logits(which), step.labels(which))
            risk_grad = torch.autograd.grad(risk, params, retain_graph=which == "forget", allow_unused=True)
            by_group = {}
            for (name, _), g_obj, g_risk in zip(named, objective, risk_grad):
                if g_risk is not None:
                    group = layer_group(name)
                    by_group[group] = by_group.get(group, 0.0) + float((g_obj.double() * g_risk.double()).sum())
            record[which] = dict(sorted(by_group.items()))
            record[f"{which}_total"] = sum(by_group.values())
            record[f"{which}_risk"] = float(risk.detach())
        self.records.append(record)


def geffect(method: str, params: dict, target: str, forget: str, retain: str, out: Path, config, trainable,
            every: int = 1, probe_size: int = 16) -> Path:
    """Train `method` (its artifact lands in out/artifact) and write the G-effects beside it."""
    if launched() or config.grad_accum != 1:
        raise UldError("uld geffect measures one process's full-batch steps: run it without accelerate launch or --grad-accum")
    out = Path(out)
    tokenizer = load_tokenizer(resolve_model(target))
    probe = Probe(tokenizer, forget, retain, probe_size, every)
    with atomic_dir(out) as tmp:
        unlearn(method, params, target, forget, retain, tmp / "artifact", config, trainable, on_step=probe)
        (tmp / "geffect.json").write_text(json.dumps(
            {"method": method, "params": params, "forget": forget, "retain": retain, "every": every,
             "probe_size": probe_size, "training": config.as_dict(), "records": probe.records}, indent=2) + "\n")
        (tmp / "geffect.md").write_text(report(method, probe.records))
        plot(method, probe.records, tmp)
    return out


def report(method: str, records: list) -> str:
    lines = [f"# G-effect of {method}", "", "| step | forget G-effect | retain G-effect | forget risk | retain risk |",
             "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['step']} | {r['forget_total']:.4g} | {r['retain_total']:.4g} | {r['forget_risk']:.4f} "
                     f"| {r['retain_risk']:.4f} |")
    if records:
        groups = list(records[-1]["forget"])
        lines += ["", f"Per layer group at step {records[-1]['step']}:", "", "| group | forget | retain |", "|---|---|---|"]
        lines += [f"| {g} | {records[-1]['forget'][g]:.4g} | {records[-1]['retain'][g]:.4g} |" for g in groups]
    return "\n".join(lines) + "\n"


def plot(method: str, records: list, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for which in ("forget", "retain"):
        ax.plot(steps, [r[f"{which}_total"] for r in records], marker="o", label=which)
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("G-effect")
    ax.set_title(f"{method}: G-effect (negative on forget = unlearning)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "geffect_total.png", dpi=120)
    plt.close(fig)

    groups = list(records[0]["forget"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len(groups) + 2.5), sharey=True)
    for ax, which in zip(axes, ("forget", "retain")):
        values = torch.tensor([[r[which][g] for r in records] for g in groups])
        limit = float(values.abs().max()) or 1.0
        image = ax.imshow(values.numpy(), aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(steps)), steps)
        ax.set_yticks(range(len(groups)), groups)
        ax.set_xlabel("step")
        ax.set_title(f"{which} G-effect by layer group")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "geffect_layers.png", dpi=120)
    plt.close(fig)
