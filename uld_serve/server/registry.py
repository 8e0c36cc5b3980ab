"""The forget sets a server offers, persisted as JSON so that a restart serves the same sets.

The live set of forget sets is the engine config's `forget_sets` dict (what requests are
resolved against); the registry validates additions and writes the file after each change.
Several replicas may share one file (a volume every pod mounts): each change is a
read-modify-write under an exclusive lock, so no replica drops another's entries, and each
replica follows the others' changes (sync.py).
"""
import fcntl
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from ..core.artifact import read_json, load_forget_set
from ..core.atomic import write_json_atomic
from ..core.settings import manifest_defaults
from ..engine.config import EngineConfig
from ..core.errors import UldError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def read_entries(path: Path) -> dict:
    """name -> artifact directory, from a registry file (empty when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return {}
    entries = read_json(path)
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise UldError(f"{path} is not a forget-set registry (a JSON object of name: directory)")
    return entries


class Registry:
    def __init__(self, path: Path, config: EngineConfig, target_name: str, roots: Iterable[Path] = ()):
        """roots: the folders that forget sets added while serving must lie in (symlinks resolved)."""
        self.path, self.config, self.target_name = Path(path), config, target_name
        self.roots = tuple(Path(r).resolve() for r in roots)

    def validate(self, name: str, directory: str):
        """The ForgetSet for a new entry, or one sentence saying why it cannot be served."""
        if not isinstance(name, str) or not NAME.match(name):
            raise UldError("a forget-set name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if name == self.target_name:
            raise UldError(f"{name!r} is the target's name")
        if name in self.config.forget_sets:
            raise UldError(f"forget set {name!r} is already registered; remove it first")
        if not isinstance(directory, str) or not directory:
            raise UldError("give the forget set's directory as 'path'")
        resolved = Path(directory).resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise UldError(f"{directory} is outside the forget-set roots ({', '.join(map(str, self.roots)) or 'none'}); "
                           "start the server with --forget-set-root")
        fs = load_forget_set(name, resolved, self.config.target_fingerprint)
        self.config.check_servable(fs)
        return fs

    def add(self, fs) -> None:
        """Persist, then serve: a failed write (OSError, e.g. a full disk) leaves both the file
        and the served sets as they were."""
        with self._entries() as entries:
            entries[fs.name] = str(fs.path)
        self.config.forget_sets[fs.name] = fs

    def remove(self, name: str) -> None:
        with self._entries() as entries:
            entries.pop(name, None)
        del self.config.forget_sets[name]

    def save(self) -> None:
        """Write the served sets into the file, keeping the entries other replicas put there."""
        with self._entries() as entries:
            entries.update({name: str(fs.path) for name, fs in self.config.forget_sets.items()})

    @contextmanager
    def _entries(self):
        """The file's current entries, to change in place; written back atomically, all under an
        exclusive lock on a file beside it (flock: local disks and most network volumes)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = read_entries(self.path)
            yield entries
            write_json_atomic(self.path, entries)


def summary(fs) -> dict:
    """What /v1/models says about a forget set, from its manifest."""
    m = fs.manifest
    alpha, relative_top, repetition_penalty, frequency_penalty = manifest_defaults(m)
    out = {"kind": m["kind"], "alpha": alpha, "relative_top": relative_top, "repetition_penalty": repetition_penalty,
           "frequency_penalty": frequency_penalty,
           "lora_rank": fs.lora_rank,
           "forget": m.get("forget", {}).get("spec"), "forget_examples": m.get("forget", {}).get("num_examples"),
           "base_fingerprint": m.get("base_fingerprint", "")[:12], "path": str(fs.path)}
    if fs.is_weight_level:
        out["method"] = m.get("method")
    else:
        out["assistant_layers"] = fs.num_layers
    return out
