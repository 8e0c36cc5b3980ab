"""The rules the code keeps: one way down the layers (import-linter contracts in
pyproject.toml) and ruff's checks with the project's line length."""
import sys
from pathlib import Path

from helpers import REPO, run

BIN = Path(sys.executable).parent


def check(command):
    return run(BIN / command[0], *command[1:], cwd=REPO)


def test_imports_follow_the_layers():
    assert "0 broken" in check(["lint-imports"])


def test_ruff():
    check(["ruff", "check", "."])


def test_only_the_application_imports_training():
    importers = sorted(str(p.relative_to(REPO)) for p in (REPO / "uld_serve").rglob("*.py") if "uld_training" in p.read_text())
    assert importers == ["uld_serve/cli/train.py", "uld_serve/demo.py"]
