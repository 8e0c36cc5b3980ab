"""Two `uld serve` replicas on loopback sharing one registry file, as the Kubernetes
Deployment runs them (deploy/README.md): a forget set added or removed through one replica
is served, or no longer served, by the other without a restart. The second replica is
configured by environment variables alone, as the container images configure it, and runs
the sparse assistant head (`--sparse-head`): its answers must be the dense head's."""
import json
import os
import shutil
import time

import httpx
import openai
import pytest

from test_server import ADMIN, KEY, free_port, serve_command, spawn, wait_healthy

pytestmark = pytest.mark.vllm


def wait_for(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "the replicas did not agree in time"
        time.sleep(0.5)


def models(url):
    return {m["id"] for m in httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()["data"]}


def answer(url, model, question="Who wrote Romeo and Juliet?", **extra):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              max_tokens=12, temperature=0, extra_body=extra or None)
    return response.choices[0].message.content


def test_replicas_sharing_a_registry_serve_the_same_forget_sets(tiny_target, forget_sets, tmp_path):
    shared = tmp_path / "volume"  # what every pod mounts
    (shared / "a").mkdir(parents=True)
    (shared / "b").mkdir()
    registry = shared / "registry.json"
    command, port = serve_command(tiny_target, forget_sets, shared / "a", "--registry", str(registry),
                                  "--forget-set-root", str(shared), "--registry-poll", "1")
    first, url_a = spawn(command, port, shared / "a")
    processes = [first]
    try:
        # A writes the registry before its engine starts; B starts beside it and reads it
        wait_for(lambda: registry.exists() or first.poll() is not None)
        port = free_port()
        env = {**os.environ, "ULD_SERVE_TARGET": str(tiny_target), "ULD_SERVE_PORT": str(port), "ULD_SERVE_MAX_MODEL_LEN": "512",
               "ULD_SERVE_REGISTRY": str(registry), "ULD_SERVE_FORGET_SET_ROOT": str(shared),
               "ULD_SERVE_SERVED_MODEL_NAME": "target", "ULD_SERVE_REGISTRY_POLL": "1", "ULD_API_KEY": KEY, "ULD_ADMIN_KEY": ADMIN,
               "ULD_SERVE_AUDIT_LOG": str(shared / "b" / "audit.jsonl"), "ULD_SERVE_SPARSE_HEAD": "1"}
        second, url_b = spawn(["serve"], port, shared / "b", env=env)
        processes.append(second)
        wait_healthy(first, url_a, shared / "a")
        wait_healthy(second, url_b, shared / "b")
        assert models(url_b) == models(url_a) == {"target", "f1", "f2"}  # B read A's registry at start
        for model, question in (("f1", "Who wrote Hamlet?"), ("f2", "Tell me about Basil Mahfouz Al-Kuwaiti."), ("target", "Hi")):
            assert answer(url_b, model, question) == answer(url_a, model, question)  # the sparse head serves the dense answers
        with pytest.raises(openai.BadRequestError, match="outside this engine's range"):
            answer(url_b, "f1", relative_top=0.5)  # the sparse head is built for the filter's r up to its bound
        added = shutil.copytree(forget_sets["f1"], shared / "f3")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert httpx.post(f"{url_a}/admin/forget-sets", headers=admin, json={"name": "f3", "path": str(added)},
                          timeout=60).status_code == 201
        wait_for(lambda: "f3" in models(url_b))
        assert answer(url_b, "f3") == answer(url_a, "f3") == answer(url_a, "f1")  # the same adapter, served by both
        assert httpx.delete(f"{url_b}/admin/forget-sets/f2", headers=admin, timeout=60).status_code == 200
        wait_for(lambda: "f2" not in models(url_a))
        with pytest.raises(openai.NotFoundError, match="this server offers target, f1, f3"):
            answer(url_a, "f2")
        assert json.loads((shared / "registry.json").read_text()) == {"f1": str(forget_sets["f1"]), "f3": str(added)}
        followed = [json.loads(line) for line in (shared / "b" / "audit.jsonl").read_text().splitlines()]
        assert {"action": "follow-add", "forget_set": "f3"}.items() <= next(e for e in followed if e.get("action") == "follow-add").items()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
