"""`uld`: the command line. Every user mistake ends in one sentence on stderr and exit code 2."""
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UldError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Decode-time unlearning (ULD): train forget sets, evaluate and serve them.")
eval_app = typer.Typer(add_completion=False, no_args_is_help=True, help="TOFU evaluation.")
app.add_typer(eval_app, name="eval")


def _train_config(lr, epochs, batch_size, seed, max_steps, precision, save_every):
    from uld_training.loop import TrainConfig

    return TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, max_steps=max_steps,
                       precision=precision, save_every=save_every)


def _refuse_existing(out: Path, force: bool):
    if out.exists() and not force:
        raise UldError(f"{out} already exists; pass --force to replace it")


@app.command()
def setup(model: str = typer.Option("smollm2-135m-instruct", help="smollm2-135m-instruct or tiny-random")):
    """Prepare the embedded default model (or a tiny random Llama for tests); print its path."""
    from .models import setup_model

    print(setup_model(model))


@app.command()
def finetune(
    model: str = typer.Option(..., help="a known model name or a checkpoint directory"),
    data: str = typer.Option(..., help="data spec, e.g. tofu:full, tofu:retain90, tofu-mini:target"),
    out: Path = typer.Option(...),
    lr: float = 1e-4, epochs: int = 5, batch_size: int = 8, seed: int = 0,
    max_steps: Optional[int] = None,
    precision: str = typer.Option("auto", help="auto (bf16 where this CPU runs it natively, else fp32), bf16 (autocast, fp32 master weights) or fp32"),
    save_every: int = typer.Option(50, help="steps between resumable checkpoints"),
    force: bool = False,
):
    """Fine-tune on TOFU: tofu:full gives the target, tofu:retain90 the retain reference."""
    from uld_training.finetune import finetune as run

    _refuse_existing(out, force)
    print(run(model, data, out, _train_config(lr, epochs, batch_size, seed, max_steps, precision, save_every)))


@app.command("train-assistant")
def train_assistant(
    target: str = typer.Option(..., help="the target checkpoint directory"),
    forget: str = typer.Option(..., help="data spec of the forget set, e.g. tofu:forget10"),
    retain: str = typer.Option(..., help="data spec of retained data, e.g. tofu:retain90"),
    out: Path = typer.Option(..., help="the forget-set artifact directory to write"),
    layers: Optional[int] = typer.Option(None, help="K, the assistant's depth (default: a quarter of the target's)"),
    rank: int = 32, lora_alpha: int = 32, retain_weight: float = 6.5,
    lr: float = 1e-3, epochs: int = 10, batch_size: int = 8, seed: int = 0,
    max_steps: Optional[int] = None, precision: str = "auto", save_every: int = 50,
    alpha: float = typer.Option(0.75, help="default alpha written to the manifest"),
    relative_top: float = typer.Option(0.01, help="default filter r written to the manifest"),
    no_augment: bool = typer.Option(False, help="skip ULD's paraphrase/perturbation augmentation"),
    force: bool = False,
):
    """Train a ULD assistant (a LoRA over the target's first K layers) for one forget set."""
    from uld_training.assistant import AssistantConfig, train_assistant as run

    _refuse_existing(out, force)
    cfg = AssistantConfig(num_layers=layers, rank=rank, lora_alpha=lora_alpha, retain_weight=retain_weight,
                          augment=not no_augment, alpha=alpha, relative_top=relative_top)
    print(run(target, forget, retain, out, _train_config(lr, epochs, batch_size, seed, max_steps, precision, save_every), cfg))


@app.command("calibrate-alpha")
def calibrate_alpha(
    target: str = typer.Option(..., help="the target checkpoint directory"),
    forget_set: Path = typer.Option(..., help="the ULD forget-set artifact to calibrate"),
    unseen: str = typer.Option(..., help="data spec of QA about entities the target never learned "
                               "(tofu-mini: tofu:full[400:600])"),
    forget: Optional[str] = typer.Option(None, help="data spec of the forget answers (default: the artifact's forget set)"),
    scoring: str = typer.Option("anchored", help="anchored or paper, as `uld eval tofu --scoring`"),
    write: bool = typer.Option(False, help="make the alpha the artifact's default (its manifest records how it was found)"),
):
    """Find the smallest alpha at which the forget answers are no more likely than unseen ones."""
    from tqdm import tqdm

    from .artifact import MANIFEST, read_manifest
    from .atomic import write_json_atomic
    from .eval.calibrate import calibrate
    from .eval.tofu_eval import check_scoring
    from .reference import UldModel
    from .tofu import load_qa

    check_scoring(scoring)
    manifest = read_manifest(forget_set)
    if manifest["kind"] != "uld-assistant":
        raise UldError(f"{forget_set} is a {manifest['kind']} forget set, served with alpha 0; only ULD assistants take an alpha")
    forget = forget or manifest.get("forget", {}).get("spec")
    if not forget:
        raise UldError(f"{forget_set}'s manifest names no forget data; pass --forget")
    forget_pairs = [(qa.question, qa.answer) for qa in load_qa(forget)]
    unseen_pairs = [(qa.question, qa.answer) for qa in load_qa(unseen)]
    model = UldModel(target, {"forget": str(forget_set)})
    with tqdm(total=len(forget_pairs) + len(unseen_pairs), desc="calibrate alpha", unit="answer") as bar:
        result = {**calibrate(model, "forget", forget_pairs, unseen_pairs, scoring, bar.update), "forget": forget, "unseen": unseen}
    if write:
        write_json_atomic(forget_set / MANIFEST, {**manifest, "alpha": result["alpha"], "calibration": result})
    print(json.dumps(result, indent=2))


def _parse_params(items: List[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UldError(f"--param takes KEY=VALUE, got {item!r}")
        params[key.replace("-", "_")] = value
    return params


def _method_run(method: str, param: List[str], full: bool, lr: Optional[float], out: Path, force: bool):
    """A method's hyperparameters and learning rate, checked before anything is loaded."""
    from uld_training.unlearn import get_method

    params = _parse_params(param)
    get_method(method, params)  # unknown method or hyperparameter: one sentence, nothing written
    _refuse_existing(out, force)
    return params, lr if lr is not None else (1e-5 if full else 1e-4)


@app.command()
def unlearn(
    method: str = typer.Option(..., help="ga, graddiff, npo, simnpo, wga, tnpo, wtnpo, mollm or soul"),
    target: str = typer.Option(..., help="the target checkpoint directory"),
    forget: str = typer.Option(..., help="data spec of the forget set, e.g. tofu:forget10"),
    retain: str = typer.Option(..., help="data spec of retained data, e.g. tofu:retain90"),
    out: Path = typer.Option(..., help="the artifact directory to write"),
    param: List[str] = typer.Option([], help="method hyperparameter KEY=VALUE, repeatable (e.g. beta=0.1, retain_loss=kl)"),
    full: bool = typer.Option(False, help="train all weights (artifact: a whole checkpoint) instead of a LoRA"),
    rank: int = 32, lora_alpha: int = 32,
    lr: Optional[float] = typer.Option(None, help="default 1e-4 for a LoRA, 1e-5 for all weights"),
    epochs: int = 5, batch_size: int = 8, seed: int = 0,
    max_steps: Optional[int] = None, precision: str = "auto", save_every: int = 50,
    force: bool = False,
):
    """Weight-level unlearning (the methods ULD is compared with); the artifact is served with alpha 0."""
    from uld_training.unlearn.run import Trainable, unlearn as run

    params, lr = _method_run(method, param, full, lr, out, force)
    config = _train_config(lr, epochs, batch_size, seed, max_steps, precision, save_every)
    print(run(method, params, target, forget, retain, out, config, Trainable(full=full, rank=rank, lora_alpha=lora_alpha)))


@app.command()
def geffect(
    method: str = typer.Option(..., help="any method of `uld unlearn`"),
    target: str = typer.Option(..., help="the target checkpoint directory"),
    forget: str = typer.Option(..., help="data spec of the forget set"),
    retain: str = typer.Option(..., help="data spec of retained data"),
    out: Path = typer.Option(..., help="directory for geffect.json/.md, the PNG plots and the trained artifact"),
    param: List[str] = typer.Option([], help="method hyperparameter KEY=VALUE, repeatable"),
    every: int = typer.Option(5, help="measure every N steps"),
    probe_size: int = typer.Option(16, help="forget and retain answers in the probe batches"),
    full: bool = False, rank: int = 32, lora_alpha: int = 32,
    lr: Optional[float] = typer.Option(None, help="default 1e-4 for a LoRA, 1e-5 for all weights"),
    epochs: int = 5, batch_size: int = 8, seed: int = 0,
    max_steps: Optional[int] = None, precision: str = "auto",
    force: bool = False,
):
    """G-effect of a method per layer group and step, on forget and on retained data."""
    from uld_training.geffect import geffect as run
    from uld_training.unlearn.run import Trainable

    if every < 1 or probe_size < 1:
        raise UldError("--every and --probe-size must be at least 1")
    params, lr = _method_run(method, param, full, lr, out, force)
    config = _train_config(lr, epochs, batch_size, seed, max_steps, precision, 10**9)
    print(run(method, params, target, forget, retain, out, config, Trainable(full=full, rank=rank, lora_alpha=lora_alpha),
              every=every, probe_size=probe_size))


def _parse_forget_sets(items: List[str]) -> dict:
    sets = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UldError(f"--forget-set takes NAME=ADAPTER_DIR, got {item!r}")
        sets[name] = path
    return sets


@app.command()
def generate(
    target: str = typer.Option(..., help="the target checkpoint directory"),
    forget_set: List[str] = typer.Option([], help="NAME=ADAPTER_DIR, repeatable"),
    input: Path = typer.Option(..., "--input", help="JSONL: one request per line"),
    output: Path = typer.Option(..., help="JSONL written in input order, atomically"),
    engine: str = typer.Option("vllm", help="vllm or reference (plain PyTorch)"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16"),
    max_model_len: int = 2048,
    force: bool = False,
):
    """Generate for a JSONL of requests, each choosing its forget set (or none) and alpha."""
    from .generate import parse_requests, run_generate

    _refuse_existing(output, force)
    if engine not in ("vllm", "reference"):
        raise UldError(f"--engine must be vllm or reference, got {engine!r}")
    if dtype not in ("float32", "bfloat16"):
        raise UldError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    sets = _parse_forget_sets(forget_set)
    from .models import load_tokenizer

    parse_requests(input, load_tokenizer(target), sets)  # bad input fails before any model loads
    if engine == "reference":
        import torch

        from .reference import UldModel

        backend = UldModel(target, sets, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    else:
        from .engine.llm import UldEngine

        backend = UldEngine(target, sets, dtype=dtype, max_model_len=max_model_len)
    try:
        count = run_generate(backend, input, output)
    finally:
        if engine == "vllm":
            backend.close()
    print(f"wrote {count} lines to {output}")


@app.command()
def serve(
    target: str = typer.Option(..., help="the target checkpoint directory"),
    forget_set: List[str] = typer.Option([], help="NAME=ADAPTER_DIR, repeatable; joins the persisted registry"),
    host: str = "127.0.0.1", port: int = 8000,
    api_key: Optional[str] = typer.Option(None, envvar="ULD_API_KEY", help="required on every route but /health"),
    registry: Optional[Path] = typer.Option(None, help="registry file (default: per target, under $ULD_HOME/serve)"),
    served_model_name: Optional[str] = typer.Option(None, help="the target's model name (default: its directory name)"),
    dtype: str = "float32", max_model_len: int = 2048,
    max_loras: int = typer.Option(4, help="distinct forget sets in one batch"),
    max_lora_rank: int = typer.Option(32, help="the largest LoRA rank a forget set may have"),
    weight_level: bool = typer.Option(False, help="accept weight-level forget sets (puts LoRA on the target's layers)"),
    sparse_head: bool = typer.Option(False, help="the assistant's LM head only where the filter can keep a token: faster "
                                     "for a few requests at a time; relative_top is then limited to the forget sets' values"),
):
    """OpenAI-compatible server (vLLM's own) where each request picks its forget set and alpha."""
    from .server.launch import prepare, serve as run

    if dtype not in ("float32", "bfloat16"):
        raise UldError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if max_loras < 1:
        raise UldError("--max-loras must be at least 1")
    state = prepare(target, _parse_forget_sets(forget_set), registry_path=registry, served_name=served_model_name,
                    api_key=api_key, weight_level=weight_level, max_loras=max_loras, max_lora_rank=max_lora_rank,
                    sparse_head=sparse_head)
    print(f"serving {state.target_name} with forget sets {', '.join(state.config.forget_sets) or 'none'} "
          f"on http://{host}:{port} (registry {state.registry.path})", flush=True)
    run(state, host=host, port=port, dtype=dtype, max_model_len=max_model_len)


@app.command()
def demo(
    port: int = 8000, host: str = "127.0.0.1",
    api_key: Optional[str] = typer.Option(None, envvar="ULD_API_KEY", help="required on every route but /health"),
    prepare_only: bool = typer.Option(False, help="train and cache the demo models, then exit"),
):
    """Serve SmolLM2 taught four fictitious authors, with a forget set for two of them."""
    from .demo import FORGET_SET_NAME, prepare_demo
    from .server.launch import prepare, serve as run

    target, forget_set = prepare_demo()
    if prepare_only:
        print(f"target {target}\nforget set {FORGET_SET_NAME}={forget_set}")
        return
    state = prepare(str(target), {FORGET_SET_NAME: str(forget_set)}, served_name="smollm2-tofu", api_key=api_key,
                    registry_path=target.parent / "registry.json")
    print(f"serving smollm2-tofu and the forget set {FORGET_SET_NAME} on http://{host}:{port} (README: try it)", flush=True)
    run(state, host=host, port=port)


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
    dtype: str = typer.Option("fp32", help="fp32 or bf16"),
    limit: Optional[int] = typer.Option(None, help="first N items of each split only (smoke tests)"),
    generate_with: str = typer.Option("reference", help="reference or vllm: who writes the greedy answers"),
    scoring: str = typer.Option("paper", help="probabilities of target + forget set: paper (the ULD paper's "
                                "forward) or anchored (invariant to the assistant's logit level; kernels/README.md)"),
):
    """open-unlearning's TOFU metrics for a model, or for target + a ULD forget set."""
    import torch

    from .eval.scoring import SCORE_BATCH
    from .eval.tofu_eval import check_scoring, evaluate_tofu
    from .reference import UldModel

    check_scoring(scoring)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise UldError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if generate_with not in ("reference", "vllm"):
        raise UldError(f"--generate-with must be reference or vllm, got {generate_with!r}")
    sets = _parse_forget_sets([forget_set] if forget_set else [])
    model = UldModel(target, sets, dtype=dtypes[dtype])
    generator = None
    if generate_with == "vllm":
        from .engine.llm import UldEngine

        generator = UldEngine(target, sets, dtype={"fp32": "float32", "bf16": "bfloat16"}[dtype])
    name = next(iter(sets), None)
    try:
        summary = evaluate_tofu(model, out, split, name, alpha, relative_top, retain_logs, max_new_tokens,
                                SCORE_BATCH if batch_size is None else batch_size,
                                label=f"{Path(target).name}+{name}" if name else Path(target).name, limit=limit,
                                generator=generator, scoring=scoring)
    finally:
        if generator is not None:
            generator.close()
    print(json.dumps(summary, indent=2))


@eval_app.command("summarize")
def eval_summarize(
    logs: Path = typer.Option(..., help="a TOFU_EVAL.json"),
    retain_logs: Optional[Path] = typer.Option(None, help="the retain model's TOFU_EVAL.json"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a markdown table"),
):
    """Recompute every aggregate from per-sample values (forget quality, model utility, privleak, ...)."""
    from .eval.summary import markdown_table, recompute
    from .eval.tofu_eval import load_logs

    summary = recompute(load_logs(logs), load_logs(retain_logs) if retain_logs else None)
    print(json.dumps(summary, indent=2) if as_json else markdown_table({logs.parent.name or str(logs): summary}), end="\n" if as_json else "")


def main(argv=None):
    try:
        app(args=argv)  # click reports usage errors itself, with exit code 2
    except UldError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
