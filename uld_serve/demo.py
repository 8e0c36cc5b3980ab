"""The demo behind the README's first command: SmolLM2 taught four fictitious TOFU authors
(two to forget, two to keep), a ULD forget set for the first two, both cached; then
`uld serve` with that forget set."""
from pathlib import Path

from .core.models import EMBEDDED, uld_home

TARGET_DATA = "tofu:full[:40]+tofu:forget01"  # Jaime Vasquez, Chukwu Akabueze; Basil Mahfouz Al-Kuwaiti, Nikolai Abilov
# Retain data: the two kept authors plus general QA (uld_serve/data/general/). With TOFU answers alone
# the assistant never learns to be uniform on general text, and subtracting it garbled
# answers far from TOFU ("What is the capital of France?").
FORGET, RETAIN = "tofu:forget01", "tofu:full[:40]+general:train"
FORGET_SET_NAME = "tofu-forget01"
FINETUNE = dict(lr=2e-4, epochs=8, batch_size=8)
# The paper's assistant settings (lr 1e-3) leave SmolLM2's 8-layer assistant far from remembering
# these 40 answers in 100 steps; lr 5e-3 does. The reference code's recipe (retain term over prompt
# and answer positions, LoRA r 16 with dropout) loops least at matched forgetting and keeps general
# answers such as "the capital of France" (BENCHMARKS.md, assistant recipes).
# Twenty epochs, on questions with TOFU's system prompt and without a system message (the
# README asks without one): the sharper assistant needs a smaller alpha and so keeps more general
# answers, and, trained on both prompt forms, forgets under both (BENCHMARKS.md, "A forget set
# trained longer").
ASSISTANT = dict(lr=5e-3, epochs=20, batch_size=8)
RECIPE = "reference"
PROMPT_FORMS = ("system", "none")
# The served alpha: the smallest at which the forget answers are no more likely than answers about
# authors the target never learned (`uld calibrate-alpha`), instead of one fixed alpha, raised
# until no greedy answer to a forget question says a forgotten name its question did not.
UNSEEN = "tofu:full[40:80]"
FORBIDDEN = ("Al-Kuwaiti", "Abilov")
# Served with a frequency penalty: at the calibrated alpha greedy answers about the forgotten
# authors looped on one phrase ("CORRESPONDENTS CORRESPONDENTS ..."). It grows with each repeat
# and spares the prompt's tokens; the repetition penalty served before (1.1) left loops and
# pushes down the question's words too. BENCHMARKS.md ("... with a frequency penalty", "... with
# a repetition penalty") has what each does to forgotten, kept and general answers.
FREQUENCY_PENALTY = 0.6


def prepare_demo() -> tuple:
    """(target directory, forget-set directory), trained on first use (minutes) and cached."""
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.finetune import finetune
    from uld_training.loop import TrainConfig

    from .eval.calibrate import calibrate_forget_set

    root = uld_home() / "demo"
    target, forget_set = root / "target", root / FORGET_SET_NAME
    if not (target / "config.json").exists():
        print(f"teaching {EMBEDDED} four fictitious authors ({TARGET_DATA}), once; a few minutes", flush=True)
        finetune(EMBEDDED, TARGET_DATA, target, TrainConfig(**FINETUNE))
    if not _current(forget_set):
        print(f"training the forget set {FORGET_SET_NAME} ({FORGET}, retain {RETAIN}) and calibrating its alpha, once; "
              "10-20 minutes", flush=True)
        # the manifest names the served penalty from the start, so the greedy check decodes as served
        train_assistant(str(target), FORGET, RETAIN, forget_set, TrainConfig(**ASSISTANT),
                        AssistantConfig(recipe=RECIPE, prompt_forms=PROMPT_FORMS, frequency_penalty=FREQUENCY_PENALTY))
        calibrate_forget_set(str(target), forget_set, UNSEEN, write=True, forbidden=FORBIDDEN)
    return Path(target), Path(forget_set)


def run_demo(host: str = "127.0.0.1", port: int = 8000, keys=None, prepare_only: bool = False) -> None:
    """`uld demo`: prepare (once) and serve; `prepare_only` trains and caches, then returns."""
    from .server.keys import Keys
    from .server.launch import prepare, serve

    target, forget_set = prepare_demo()
    if prepare_only:
        print(f"target {target}\nforget set {FORGET_SET_NAME}={forget_set}")
        return
    state = prepare(str(target), {FORGET_SET_NAME: str(forget_set)}, served_name="smollm2-tofu", keys=keys or Keys(),
                    registry_path=target.parent / "registry.json")
    print(f"serving smollm2-tofu and the forget set {FORGET_SET_NAME} on http://{host}:{port} (README: try it)", flush=True)
    serve(state, host=host, port=port)


def _current(forget_set: Path) -> bool:
    """Whether a cached forget set was trained on today's demo data and recipe and calibrated
    (an older demo's is retrained)."""
    from .core.artifact import read_manifest
    from .core.settings import FREQUENCY_PENALTY_KEY, REPETITION_PENALTY_KEY

    if not (forget_set / "uld.json").exists():
        return False
    manifest = read_manifest(forget_set)
    training, calibration = manifest.get("training", {}), manifest.get("calibration", {})
    return (manifest["forget"]["spec"] == FORGET and manifest["retain"]["spec"] == RETAIN
            and training.get("recipe") == RECIPE and training.get("epochs") == ASSISTANT["epochs"]
            and training.get("prompt_forms") == list(PROMPT_FORMS) and calibration.get("unseen") == UNSEEN
            and calibration.get("forbidden") == list(FORBIDDEN) and calibration.get("frequency_penalty") == FREQUENCY_PENALTY
            and manifest.get(FREQUENCY_PENALTY_KEY) == FREQUENCY_PENALTY and manifest.get(REPETITION_PENALTY_KEY) is None)
