"""`uld eval tofu`, `uld eval summarize`, `uld calibrate-alpha`."""
import json
from pathlib import Path
from typing import List, Optional

import typer

from ..core.devices import DEVICE_HELP
from ..core.errors import UldError
from .app import DTYPE, TARGET, app, eval_app, parse_forget_sets

DEVICE = typer.Option("auto", help=f"where the reference model scores and answers: {DEVICE_HELP}")

SCORING_HELP = "paper (the ULD paper's forward) or anchored (invariant to the assistant's logit level; kernels/README.md)"


@eval_app.command("tofu")
def eval_tofu(
    target: str = typer.Option(..., help="model checkpoint directory (or a known model name)"),
    forget_set: Optional[str] = typer.Option(None, help="NAME=ADAPTER_DIR: evaluate target + this forget set"),
    split: str = "forget10",
    out: Path = typer.Option(...),
    retain_logs: Optional[Path] = typer.Option(None, help="a retain model's TOFU_EVAL.json (ours or open-unlearning's)"),
    alpha: Optional[float] = None, relative_top: Optional[float] = None,
    max_new_tokens: int = 200,
    batch_size: Optional[int] = typer.Option(None, help="answers scored per forward (a question's answers share its prompt; default 16)"),
    dtype: str = DTYPE,
    limit: Optional[int] = typer.Option(None, help="first N items of each split only (smoke tests)"),
    generate_with: str = typer.Option("reference", help="reference or vllm: who writes the greedy answers"),
    scoring: str = typer.Option("paper", help=f"probabilities of target + forget set: {SCORING_HELP}"),
    device: str = DEVICE,
):
    """open-unlearning's TOFU metrics for a model, or for target + a ULD forget set."""
    from ..eval.tofu_eval import evaluate_checkpoint

    pair = next(iter(parse_forget_sets([forget_set]).items())) if forget_set else None
    summary = evaluate_checkpoint(target, pair, out, split, dtype=dtype, device=device, generate_with=generate_with,
                                  batch_size=batch_size,
                                  alpha=alpha, relative_top=relative_top, retain_logs=retain_logs,
                                  max_new_tokens=max_new_tokens, limit=limit, scoring=scoring)
    print(json.dumps(summary, indent=2))


@eval_app.command("summarize")
def eval_summarize(
    logs: Path = typer.Option(..., help="a TOFU_EVAL.json"),
    retain_logs: Optional[Path] = typer.Option(None, help="the retain model's TOFU_EVAL.json"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a markdown table"),
    limit: Optional[int] = typer.Option(None, help="only the first N items of each split, in both logs "
                                        "(the reference ULD code evaluates the first 300)"),
):
    """Recompute every aggregate from per-sample values (forget quality, model utility, privleak, ...)."""
    from ..eval.summary import first_items, markdown_table, recompute
    from ..eval.tofu_eval import load_logs

    if limit is not None and limit < 1:
        raise UldError("--limit must be at least 1")
    loaded, reference = load_logs(logs), load_logs(retain_logs) if retain_logs else None
    if limit is not None:
        loaded, reference = first_items(loaded, limit), reference and first_items(reference, limit)
    summary = recompute(loaded, reference)
    print(json.dumps(summary, indent=2) if as_json else markdown_table({logs.parent.name or str(logs): summary}),
          end="\n" if as_json else "")


@app.command("calibrate-alpha")
def calibrate_alpha(
    target: str = TARGET,
    forget_set: Path = typer.Option(..., help="the ULD forget-set artifact to calibrate"),
    unseen: str = typer.Option(..., help="data spec of QA about entities the target never learned "
                               "(tofu-mini: tofu:full[400:600])"),
    forget: Optional[str] = typer.Option(None, help="data spec of the forget answers (default: the artifact's forget set)"),
    scoring: str = typer.Option("anchored", help="anchored or paper, as `uld eval tofu --scoring`"),
    write: bool = typer.Option(False, help="make the alpha the artifact's default (its manifest records how it was found)"),
    forbid: List[str] = typer.Option([], help="a string no greedy answer to a forget question may say unless the question "
                                     "does (e.g. a forgotten name; repeat the flag for more): alpha is raised until none does"),
    device: str = DEVICE,
):
    """Find the smallest alpha at which the forget answers are no more likely than unseen ones
    (and, with --forbid, at which no greedy answer says what must be forgotten)."""
    from ..eval.calibrate import calibrate_forget_set

    print(json.dumps(calibrate_forget_set(target, forget_set, unseen, forget, scoring, write, device, forbid), indent=2))
