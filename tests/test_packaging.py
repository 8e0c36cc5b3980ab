"""The wheel, installed in a fresh virtual environment outside the source tree, carries
everything a user needs: the commands, the training package and the TOFU data."""
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from helpers import REPO, run


def test_the_wheel_runs_setup_and_finetune_from_a_fresh_venv(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("uld_serve", "training", "kernels"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", source, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("uld_serve-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # the dependencies (torch, transformers, ...) come from this environment rather than a second
    # multi-GB install; its editable uld-serve is not activated by a plain path entry
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ULD_DATA_DIR", "PYTHONPATH")}
    env["ULD_HOME"] = str(tmp_path / "home")
    where = run(python, "-c", "import uld_serve, uld_training; print(uld_serve.__file__, uld_training.__file__)", cwd=tmp_path, env=env)
    assert all(path.startswith(str(site)) for path in where.split()), where
    uld = venv / "bin" / "uld"
    base = run(uld, "setup", "--model", "tiny-random", cwd=tmp_path, env=env).strip()
    out = tmp_path / "target"
    run(uld, "finetune", "--model", base, "--data", "tofu:forget01", "--max-steps", "1", "--batch-size", "4", "--precision", "fp32",
        "--out", out, cwd=tmp_path, env=env)
    assert (out / "model.safetensors").is_file() and (out / "training_log.json").is_file()
