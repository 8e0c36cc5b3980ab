"""The working directory that the TOFU benchmark scripts share (tofu_e2e.py fills it,
tune_assistant.py, compare_methods.py and forget_quality_vs_alpha.py add to it): one
place names its folders. Default: <uld home>/bench/tofu-<protocol>."""
import json
from pathlib import Path

# tune_assistant.py's candidates (their settings live there) -> the label of the forget10
# assistant trained with each; its folder is forget10-tuned-<the candidate's name less "fast">
TUNED = {"paper": "tuned with the paper's settings", "fast": "tuned", "fast-k15": "tuned at K=15",
         "fast-k15-general": "tuned at K=15, general retain data", "reference": "tuned, reference recipe",
         "reference-general": "tuned, reference recipe, general retain data",
         "fast-k15-general-names": "tuned at K=15, general + names retain data",
         "fast-k15-general-varied": "tuned at K=15, general + names + varied retain data",
         "fast-k15-general-positions": "tuned at K=15, general retain data, prompt+answer positions",
         "fast-k15-general-lora": "tuned at K=15, general retain data, the reference's LoRA",
         "fast-k15-general-positions-names": "tuned at K=15, general + names retain data, prompt+answer positions",
         "fast-k15-general-positions-e10": "tuned at K=15, general retain data, prompt+answer positions, 10 epochs",
         "fast-k15-general-positions-names-e10": "tuned at K=15, general + names retain data, prompt+answer positions, 10 epochs",
         "fast-k15-general-positions-names-e20": "tuned at K=15, general + names retain data, prompt+answer positions, 20 epochs",
         "fast-k15-general-positions-names-authors-e20":
             "tuned at K=15, general + names + authors retain data, prompt+answer positions, 20 epochs",
         "fast-k15-general-positions-names-famous-e20":
             "tuned at K=15, general + names + famous-people retain data, prompt+answer positions, 20 epochs"}


def tuned_folder(candidate: str) -> str:
    rest = candidate.removeprefix("fast").removeprefix("-")
    return "forget10-tuned" + (f"-{rest}" if rest else "")


# ULD forget sets: label -> folder (tofu_e2e.py trains "paper settings", and trained "K=15, general
# retain data, 10 epochs" until tune_assistant.py's choice took its place in its table)
FORGET_SETS = {"paper settings": "forget10", "K=15, general retain data, 10 epochs": "forget10-k15-general-e10",
               **{label: tuned_folder(candidate) for candidate, label in TUNED.items()}}
# tune_assistant.py --unaugmented: each tuned forget10 assistant trained without ULD's augmentation,
# as its validation candidates are
UNAUGMENTED = ", unaugmented"


def variant_label(label: str, unaugmented: bool = False, seed: int = 0, epochs: int = None) -> str:
    """The label of a tuned forget10 assistant (`label`) trained by tune_assistant.py --unaugmented,
    --seed or --epochs (each explained where its folders are named below)."""
    return (label + (UNAUGMENTED if unaugmented else "") + (f", seed {seed}" if seed else "")
            + (f", forget10 at {epochs} epochs" if epochs else ""))


FORGET_SETS.update({variant_label(label, unaugmented=True): folder + "-unaugmented" for label, folder in list(FORGET_SETS.items())
                    if label.startswith("tuned")})
# tune_assistant.py --seed: each tuned forget10 assistant trained with another seed (the same
# validation choice and alpha rule), to see how far one recipe's result moves with the seed alone
SEEDS = (1, 2)
FORGET_SETS.update({variant_label(label, seed=seed): f"{folder}-seed{seed}" for label, folder in list(FORGET_SETS.items())
                    if label.startswith("tuned") for seed in SEEDS})
# tune_assistant.py --epochs: each tuned forget10 assistant trained for another number of epochs
# than its candidate's; ULD's augmentation doubles the steps of an epoch, so an augmented assistant
# at half the epochs takes the unaugmented one's steps and sees each forget fact as often
EPOCHS = (10,)
FORGET_SETS.update({variant_label(label, epochs=n): f"{folder}-e{n}" for label, folder in list(FORGET_SETS.items())
                    if label.startswith("tuned") and ", seed" not in label for n in EPOCHS})

# tune_assistant.py's folder, and in it its choice of forget10 assistant (the forget set and the
# rule's alpha), one file per footing: augmented as ULD trains, or --unaugmented as its candidates
TUNE = "tune-assistant"
CHOICES = {False: "choice.json", True: "choice-unaugmented.json"}


def choice_file(unaugmented: bool, seed: int = 0, epochs: int = None) -> str:
    """The choice of a forget10 assistant trained with another seed (or number of epochs) sits
    beside CHOICES, which `choices` alone reads."""
    suffix = (f"-seed{seed}" if seed else "") + (f"-e{epochs}" if epochs else "")
    return CHOICES[unaugmented].replace(".json", f"{suffix}.json")

# general_qa.py's output folder for each opener set, questions answered by the tofu-mini target:
# general (the benchmarks now train and check on the shipped general:train / general:heldout
# instead), names (questions about people outside literature), varied (places, events,
# works, science, everyday life) and authors (real writers, kept apart from the real-authors
# test split), the last three added to the assistant's retain data by tune_assistant.py's
# candidates that name them
QA_FOLDERS = {"general": "general-qa", "names": "names-qa", "varied": "varied-qa", "authors": "authors-qa"}

# TOFU evaluations: label -> folder holding TOFU_EVAL.json
EVALS = {
    "retain reference": "eval-retain",
    "target": "eval-target",
    "ULD, paper settings, paper scoring": "eval-uld",
    "ULD, paper settings, anchored scoring": "eval-uld-anchored",
    "ULD, tuned, anchored scoring": "eval-uld-tuned-anchored",
    "ULD, tuned, paper scoring": "eval-uld-tuned-paper",
}


def calibrated(forget_set: str) -> str:
    """The evaluation label of a FORGET_SETS assistant served at its calibrated alpha (the one
    `uld calibrate-alpha` wrote into its manifest)."""
    return f"ULD, {forget_set}, calibrated alpha, anchored scoring"


def transferred(forget_set: str) -> str:
    """The evaluation label of a FORGET_SETS assistant served at its calibrated alpha times the
    validation ratio (tune_assistant.py's rule)."""
    return f"ULD, {forget_set}, calibrated alpha x validation ratio, anchored scoring"


EVALS.update({calibrated(label): f"eval-{folder}-calibrated" for label, folder in FORGET_SETS.items()})
EVALS.update({transferred(label): f"eval-{folder}-transferred" for label, folder in FORGET_SETS.items()})


def default_workdir(protocol: str = "mini") -> Path:
    from uld_serve.core.models import uld_home

    return uld_home() / "bench" / f"tofu-{protocol}"


def eval_logs(work: Path, label: str) -> Path:
    return Path(work) / EVALS[label] / "TOFU_EVAL.json"


def evaluated(work: Path, labels) -> dict:
    """label -> TOFU_EVAL.json for those of `labels` that have been evaluated."""
    return {label: eval_logs(work, label) for label in labels if eval_logs(work, label).exists()}


def choices(work: Path, variants: bool = False) -> list:
    """tune_assistant.py's recorded choices in `work` (augmented first), each naming its forget10
    assistant (`final`), `label` and the rule's `alpha`; with `variants`, those of other seeds and
    numbers of epochs after them."""
    others = [*(choice_file(u, seed) for seed in SEEDS for u in CHOICES), *(choice_file(u, 0, n) for n in EPOCHS for u in CHOICES)]
    names = [*CHOICES.values(), *(others if variants else [])]
    paths = [Path(work) / TUNE / name for name in names]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def forget10_summaries(work: Path, labels) -> dict:
    """label -> the forget10 summary of each evaluated one of `labels`, on all items and on each
    split's first 300 (as the reference code evaluates, `uld eval summarize --limit 300`), with
    the forget set and alpha it was evaluated with where tune_assistant.py's evaluate_forget10 recorded them."""
    from uld_serve.eval.summary import first_items, recompute
    from uld_serve.eval.tofu_eval import load_logs

    reference = load_logs(eval_logs(work, "retain reference"))
    reference_300 = first_items(reference, 300)  # recompute reads the reference, never writes it
    summaries = {}
    for label, logs in evaluated(work, labels).items():
        evaluated_with, model = logs.parent / "forget_set.json", load_logs(logs)
        summaries[label] = {"all": recompute(model, reference), "first_300": recompute(first_items(model, 300), reference_300),
                            **(json.loads(evaluated_with.read_text()) if evaluated_with.exists() else {})}
    return summaries


def cached(path: Path, compute, current=lambda result: True) -> dict:
    """compute(), stored at `path`; what is stored there is reused while current(it) holds."""
    if not (path.exists() and current(json.loads(path.read_text()))):
        path.parent.mkdir(parents=True, exist_ok=True)
        from uld_serve.core.atomic import write_json_atomic

        write_json_atomic(path, compute())  # a run killed mid-write leaves no half file to resume from
    return json.loads(path.read_text())
