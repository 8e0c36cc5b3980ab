"""The wheel, built from the sdist by `python -m build` and installed in a fresh virtual
environment outside the source tree, carries everything a user needs: the commands, the
training package, the TOFU data, and the vLLM plugins `uld serve` stands on."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from helpers import REPO, run
from test_server import free_port

pytestmark = pytest.mark.vllm  # it ends by serving


def test_the_wheel_runs_setup_finetune_and_serve_from_a_fresh_venv(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("uld_serve", "training", "kernels"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", source, cwd=tmp_path)  # the sdist, then the wheel from it
    wheel = next((tmp_path / "dist").glob("uld_serve-*.whl"))
    with tarfile.open(next((tmp_path / "dist").glob("uld_serve-*.tar.gz"))) as sdist:
        assert any(name.endswith("uld_serve/data/tofu/forget01.json") for name in sdist.getnames())
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

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([uld, "serve", "--target", out, "--port", str(port), "--max-model-len", "512"], cwd=tmp_path,
                              env={**env, "ULD_ENFORCE_EAGER": "1"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                           json={"model": "target", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["uld"]["forget_set"] is None  # our middleware, from the wheel
    finally:
        server.terminate()
        server.wait(timeout=60)
