"""The forget-set artifact: a peft LoRA adapter directory plus a self-describing manifest."""
import json
from dataclasses import dataclass
from pathlib import Path
from .errors import UldError
from .settings import SERVED_PENALTIES

MANIFEST = "uld.json"
FORMAT_VERSION = 1
KINDS = ("uld-assistant", "weight-level")


def write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    if manifest.get("kind") not in KINDS:
        raise ValueError(f"manifest kind must be one of {KINDS}")
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UldError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise UldError(f"{path} is not UTF-8 text (byte {e.start})") from None


def read_manifest(directory) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise UldError(f"forget set {directory} does not exist")
    if not path.is_file():
        raise UldError(f"{directory} is not a forget set: it has no {MANIFEST}")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise UldError(f"{path} is not a forget-set manifest (a JSON object)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UldError(f"{path} has format version {manifest.get('format_version')!r}; this uld reads {FORMAT_VERSION}")
    if manifest.get("kind") not in KINDS:
        raise UldError(f"{path} has unknown kind {manifest.get('kind')!r}")
    for key, check in SERVED_PENALTIES.items():
        if manifest.get(key) is not None:
            try:
                check(manifest[key])
            except UldError as e:
                raise UldError(f"{path}: {e}") from None
    if manifest.get("weights") == "full":
        return manifest  # a whole checkpoint (weight-level method on all weights)
    layers, training = manifest.get("num_layers"), manifest.get("training", {})
    if manifest["kind"] == "uld-assistant" and not (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1):
        raise UldError(f"{path} has no valid num_layers (the assistant's depth)")
    rank = training.get("rank", 8) if isinstance(training, dict) else None
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        raise UldError(f"{path} has no valid training.rank (the LoRA rank)")
    if not (directory / "adapter_config.json").is_file():
        raise UldError(f"{directory} has a manifest but no peft adapter (adapter_config.json)")
    return manifest


def check_base(manifest: dict, directory, target_fingerprint: str) -> None:
    expected = manifest.get("base_fingerprint")
    if expected != target_fingerprint:
        raise UldError(
            f"forget set {directory} was trained for base model {str(expected)[:12]}, "
            f"not for this target ({target_fingerprint[:12]}); train it on this target"
        )


@dataclass
class ForgetSet:
    """A ULD forget set as served: its name, its directory and its manifest."""

    name: str
    path: Path
    manifest: dict

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def is_weight_level(self) -> bool:
        """A LoRA on the target itself (a weight-level method): served alone, with alpha 0."""
        return self.manifest["kind"] == "weight-level"

    @property
    def lora_rank(self) -> int:
        return int(self.manifest.get("training", {}).get("rank", 8))


def load_forget_set(name: str, path, target_fingerprint: str) -> ForgetSet:
    manifest = read_manifest(path)
    check_base(manifest, path, target_fingerprint)
    if manifest.get("weights") == "full":
        raise UldError(f"{path} holds all weights of an unlearned model, not an adapter; pass it as the target")
    return ForgetSet(name, Path(path), manifest)


def find_forget_set(forget_sets: dict, name: str) -> ForgetSet:
    if name not in forget_sets:
        known = ", ".join(sorted(forget_sets)) or "none"
        raise UldError(f"unknown forget set {name!r}; known forget sets: {known}")
    return forget_sets[name]
