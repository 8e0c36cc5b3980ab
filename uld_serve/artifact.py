"""The forget-set artifact: a peft LoRA adapter directory plus a self-describing manifest."""
import json
from pathlib import Path

from .errors import UldError

MANIFEST = "uld.json"
FORMAT_VERSION = 1
KINDS = ("uld-assistant", "weight-level")


def write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    if manifest.get("kind") not in KINDS:
        raise ValueError(f"manifest kind must be one of {KINDS}")
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise UldError(f"forget set {directory} does not exist")
    if not path.is_file():
        raise UldError(f"{directory} is not a forget set: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UldError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UldError(f"{path} has format version {manifest.get('format_version')!r}; this uld reads {FORMAT_VERSION}")
    if manifest.get("kind") not in KINDS:
        raise UldError(f"{path} has unknown kind {manifest.get('kind')!r}")
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
