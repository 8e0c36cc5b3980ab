"""`uld serve` on loopback, driven by the official openai client (tiny-random, tiny adapters)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.vllm  # every test here starts or imports vLLM

KEY = "test-key"  # a client key
ADMIN = "test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(tiny_target, forget_sets, work, *extra):
    """`uld serve`'s arguments for the two test forget sets on a free port: (arguments, port)."""
    port = free_port()
    return ["serve", "--target", str(tiny_target),
            "--forget-set", f"f1={forget_sets['f1']}", "--forget-set", f"f2={forget_sets['f2']}", "--api-key", KEY,
            "--port", str(port), "--registry", str(work / "registry.json"), "--max-model-len", "512",
            "--served-model-name", "target", "--admin-key", ADMIN, "--forget-set-root", str(work.parent), *extra], port


def start_server(tiny_target, forget_sets, work, *extra):
    """A `uld serve` subprocess on a free port, once /health answers: (process, url)."""
    command, port = serve_command(tiny_target, forget_sets, work, *extra)
    return launch(command, port, work)


def spawn(arguments, port, work, env=None):
    """`uld` with these arguments (and environment) as a subprocess: (process, url), not yet
    answering (wait_healthy waits for it)."""
    command = [sys.executable, "-c", "from uld_serve.cli import main; main()", *arguments]
    log = open(work / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                               start_new_session=True)  # a process group: a test can kill the server with its engine
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process, url, work):
    deadline = time.time() + 300
    while True:
        if process.poll() is not None:
            raise AssertionError("server exited:\n" + (work / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            process.kill()
            raise AssertionError("server did not start:\n" + (work / "server.log").read_text()[-3000:])
        time.sleep(1)


def launch(arguments, port, work, env=None):
    """`uld` with these arguments (and environment) as a subprocess, once /health answers on
    the port: (process, url)."""
    process, url = spawn(arguments, port, work, env)
    wait_healthy(process, url, work)
    return process, url


@pytest.fixture(scope="module")
def server(tiny_target, forget_sets, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    process, url = start_server(tiny_target, forget_sets, work, "--drain-timeout", "60")
    yield {"url": url, "work": work, "process": process, "client": openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)}
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=90)


def chat(client, model, question, **extra):
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                              max_tokens=10, temperature=0, extra_body=extra or None)
    return response.choices[0].message.content, response.to_dict()["uld"]


def test_models_lists_the_target_and_each_forget_set(server):
    cards = {m.id: m.to_dict() for m in server["client"].models.list()}
    assert set(cards) == {"target", "f1", "f2"}
    assert cards["f2"]["uld"]["alpha"] == 1.5 and cards["f1"]["uld"]["kind"] == "uld-assistant"
    assert cards["f1"]["parent"] == "target" and cards["f1"]["uld"]["assistant_layers"] == 2


def test_forget_set_by_model_name_or_extra_body(server):
    client = server["client"]
    plain, applied = chat(client, "target", "Who wrote Hamlet?")
    none = {"repetition_penalty": None, "frequency_penalty": None}
    assert applied == {"forget_set": None, "alpha": 0.0, "relative_top": 0.01, **none}
    with_f1, applied = chat(client, "f1", "Who wrote Hamlet?")
    assert applied == {"forget_set": "f1", "alpha": 0.75, "relative_top": 0.01, **none}  # the manifest's defaults
    assert with_f1 != plain
    assert chat(client, "target", "Who wrote Hamlet?", forget_set="f1") == (with_f1, applied)
    _, applied = chat(client, "f2", "Who wrote Hamlet?", alpha=0.3)
    assert applied["alpha"] == 0.3
    assert chat(client, "f1", "Who wrote Hamlet?", alpha=0)[0] == plain  # alpha 0 is the plain target


def test_a_forget_sets_repetition_penalty_is_served_as_the_reference_decodes_it(server, tiny_target, forget_sets):
    """f2's manifest names a repetition penalty (0.5, conftest): the server applies it where a
    request names none, a request's own value wins, and the tokens equal the reference
    decoding's with the same settings; so do a request's frequency penalty (the same path as a
    manifest's, core.settings.resolve) and presence penalty (vLLM's own field)."""
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.reference import UldModel

    reference = UldModel(tiny_target, forget_sets)
    answers = {}
    frequency = {"frequency_penalty": -2.0, "presence_penalty": -1.0}  # negative: these tiny models repeat nothing
    for model, extra, penalty in (("f2", {}, 0.5), ("f2", {"repetition_penalty": 1.0}, 1.0), ("target", {"repetition_penalty": 0.5}, 0.5),
                                  ("target", frequency, None), ("target", {}, None)):
        response = httpx.post(f"{server['url']}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                              json={"model": model, "messages": [{"role": "user", "content": "Name a famous bridge."}],
                                    "max_tokens": 12, "temperature": 0, "return_token_ids": True, **extra}).json()
        assert response["uld"]["repetition_penalty"] == penalty
        assert response["uld"]["frequency_penalty"] == extra.get("frequency_penalty")
        tokens = response["choices"][0]["token_ids"]
        request = GenerationRequest(response["prompt_token_ids"], None if model == "target" else model, max_new_tokens=12, **extra)
        assert tokens == reference.generate([request])[0]
        answers[(model, penalty, bool(extra.get("frequency_penalty")))] = tokens
    assert answers[("f2", 0.5, False)] != answers[("f2", 1.0, False)]  # the manifest's penalty changed the answer
    assert answers[("target", None, True)] != answers[("target", None, False)]  # and the request's frequency penalty


def test_streaming_equals_the_full_answer(server):
    client = server["client"]
    full, _ = chat(client, "f2", "Tell me about Basil Mahfouz Al-Kuwaiti.")
    stream = client.chat.completions.create(model="f2", messages=[{"role": "user", "content": "Tell me about Basil Mahfouz Al-Kuwaiti."}],
                                            max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == full
    raw = httpx.post(f"{server['url']}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "f1", "prompt": "Hello", "max_tokens": 3, "stream": True})
    assert raw.headers["x-uld-forget-set"] == "f1" and raw.headers["x-uld-alpha"] == "0.75"


def test_user_errors_are_4xx(server):
    client = server["client"]
    with pytest.raises(openai.NotFoundError, match="f1, f2"):
        chat(client, "nope", "hi")
    with pytest.raises(openai.NotFoundError, match="known forget sets: f1, f2"):
        chat(client, "target", "hi", forget_set="nope")
    for alpha in (5.5, -1, "abc", True):
        with pytest.raises(openai.BadRequestError, match="alpha must be a number in"):
            chat(client, "f1", "hi", alpha=alpha)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="f1", prompt="hello " * 600, max_tokens=4)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad = httpx.post(f"{server['url']}/v1/chat/completions", headers=headers, content=b'{"model": "f1", messages')
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]


def test_structured_outputs_are_refused_with_a_uld_forget_set_and_served_without(server):
    client = server["client"]
    for extra in ({"response_format": {"type": "json_object"}}, {"structured_outputs": {"choice": ["yes", "no"]}}):
        with pytest.raises(openai.BadRequestError, match="structured outputs .* are not served with a ULD forget set"):
            chat(client, "f1", "Answer in JSON.", **extra)
        with pytest.raises(openai.BadRequestError, match="are not served with a ULD forget set"):
            chat(client, "target", "Answer in JSON.", forget_set="f2", **extra)
    answer, applied = chat(client, "target", "Yes or no?", structured_outputs={"choice": ["yes", "no"]})
    assert answer in ("yes", "no") and applied["forget_set"] is None  # the target alone keeps vLLM's structured outputs
    assert chat(client, "f1", "hi", response_format={"type": "text"})[1]["forget_set"] == "f1"  # plain text is no grammar


def test_bodies_over_the_limit_get_413(server):
    url, big = server["url"], b'{"model": "f1", "pad": "' + b"x" * (5 << 20) + b'"}'  # 5 MiB against the default 4
    for key, path in ((KEY, "/v1/chat/completions"), (ADMIN, "/admin/forget-sets")):
        refused = httpx.post(f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, content=big)
        assert refused.status_code == 413 and "larger than this server's limit" in refused.json()["error"]["message"]
    chunked = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                         content=(big[i : i + 65536] for i in range(0, len(big), 65536)))  # no content-length
    assert chunked.status_code == 413
    assert chat(server["client"], "f1", "hi")[1]["forget_set"] == "f1"  # the server carries on


def test_keys_guard_every_route_but_health_and_roles_split_them(server):
    url = server["url"]
    assert httpx.get(f"{url}/health").status_code == 200
    for path in ("/v1/models", "/metrics", "/admin/forget-sets"):
        assert httpx.get(f"{url}{path}").status_code == 401
        assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    for method, path in (("GET", "/metrics"), ("GET", "/admin/forget-sets"), ("DELETE", "/admin/forget-sets/f1"),
                         ("POST", "/admin/forget-sets")):
        refused = httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {KEY}"}, json={})
        assert refused.status_code == 403 and "admin key" in refused.json()["error"]["message"], path
    assert sorted(httpx.get(f"{url}/admin/forget-sets", headers={"Authorization": f"Bearer {ADMIN}"}).json()) == ["f1", "f2"]
    metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'uld_requests_total{forget_set="f1"}' in metrics
    admin_client = openai.OpenAI(base_url=f"{url}/v1", api_key=ADMIN, max_retries=0)
    assert chat(admin_client, "f1", "Who wrote Hamlet?") == chat(server["client"], "f1", "Who wrote Hamlet?")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_concurrent_mixed_requests_equal_one_by_one(server):
    client = server["client"]
    questions = ["Who wrote Hamlet?", "What does Hsiao Yun-Hwa write?", "Hi", "Name a famous bridge."]
    jobs = [(q, model, alpha) for q in questions for model, alpha in
            (("target", None), ("f1", None), ("f2", None), ("f1", 1.5), ("f2", 0.0), ("target", None), ("f1", 2.0), ("f2", 3.0))]
    assert len(jobs) == 32

    def run(job):
        q, model, alpha = job
        return chat(client, model, q, **({"alpha": alpha} if alpha is not None else {}))

    one_by_one = [run(job) for job in jobs]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(run, jobs))
    assert together == one_by_one


def test_registry_add_remove_and_refuse(server, forget_sets, tiny_base, tmp_path):
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    url, headers = server["url"], {"Authorization": f"Bearer {ADMIN}"}
    other = train_assistant(str(tiny_base), "tofu:forget01", "tofu:retain90[:8]", tmp_path / "other",
                            TrainConfig(max_steps=1, batch_size=4, precision="fp32"), AssistantConfig(num_layers=2))
    refused = httpx.post(f"{url}/admin/forget-sets", headers=headers, json={"name": "other", "path": str(other)})
    assert refused.status_code == 400 and "was trained for base model" in refused.json()["error"]["message"]
    outside = shutil.copytree(forget_sets["f1"], Path(tempfile.mkdtemp()) / "f3")  # not under --forget-set-root
    (tmp_path / "link").symlink_to(outside)  # inside the root, pointing out of it
    for path in (outside, tmp_path / "link"):
        refused = httpx.post(f"{url}/admin/forget-sets", headers=headers, json={"name": "f3", "path": str(path)})
        assert refused.status_code == 400 and "outside the forget-set roots" in refused.json()["error"]["message"]
    shutil.rmtree(outside.parent)
    copy = shutil.copytree(forget_sets["f1"], tmp_path / "f3")
    added = httpx.post(f"{url}/admin/forget-sets", headers=headers, json={"name": "f3", "path": str(copy)})
    assert added.status_code == 201 and added.json()["uld"]["alpha"] == 0.75
    assert httpx.post(f"{url}/admin/forget-sets", headers=headers, json={"name": "f3", "path": str(copy)}).status_code == 409
    assert chat(server["client"], "f3", "Who wrote Hamlet?") [0] == chat(server["client"], "f1", "Who wrote Hamlet?")[0]
    assert set(json.loads((server["work"] / "registry.json").read_text())) == {"f1", "f2", "f3"}
    assert httpx.delete(f"{url}/admin/forget-sets/f3", headers=headers).status_code == 200
    assert httpx.delete(f"{url}/admin/forget-sets/f3", headers=headers).status_code == 404
    with pytest.raises(openai.NotFoundError):
        chat(server["client"], "f3", "hi")
    assert set(json.loads((server["work"] / "registry.json").read_text())) == {"f1", "f2"}


def test_a_truncated_adapter_is_refused_at_add(server, forget_sets, tmp_path):
    headers = {"Authorization": f"Bearer {ADMIN}"}
    copy = shutil.copytree(forget_sets["f1"], tmp_path / "f4")
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    refused = httpx.post(f"{server['url']}/admin/forget-sets", headers=headers, json={"name": "f4", "path": str(copy)})
    assert refused.status_code == 400 and "could not load" in refused.json()["error"]["message"]
    assert "f4" not in httpx.get(f"{server['url']}/admin/forget-sets", headers=headers).json()


def test_a_forget_set_whose_directory_is_removed_while_served(server, forget_sets, tmp_path):
    """Its adapter stays in the engine: requests are still served with it, none with a 5xx,
    the others are untouched, and the admin can remove it."""
    url, headers = server["url"], {"Authorization": f"Bearer {ADMIN}"}
    copy = shutil.copytree(forget_sets["f1"], tmp_path / "f5")
    assert httpx.post(f"{url}/admin/forget-sets", headers=headers, json={"name": "f5", "path": str(copy)}).status_code == 201
    before = chat(server["client"], "f5", "Who wrote Hamlet?")
    shutil.rmtree(copy)
    for model in ("f5", "f2", "f1", "f5"):
        response = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                              json={"model": model, "messages": [{"role": "user", "content": "Who wrote Hamlet?"}], "max_tokens": 10,
                                    "temperature": 0})
        assert response.status_code < 500, response.text
    assert chat(server["client"], "f5", "Who wrote Hamlet?") == before
    assert httpx.delete(f"{url}/admin/forget-sets/f5", headers=headers).status_code == 200


def test_a_client_that_disconnects_mid_stream_is_aborted(server):
    url = server["url"]
    with httpx.stream("POST", f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"model": "f1", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True,
                            "stream": True}) as stream:
        for index, _ in enumerate(stream.iter_lines()):
            if index == 3:
                break  # leaving the block closes the connection
    metrics = {"Authorization": f"Bearer {ADMIN}"}
    deadline = time.time() + 20
    while True:
        text = httpx.get(f"{url}/metrics", headers=metrics).text
        assert "vllm:num_requests_running{" in text
        running = sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M))
        if running == 0:
            break
        assert time.time() < deadline, "the engine kept generating for a client that had left"
        time.sleep(0.2)


def test_a_restart_serves_the_persisted_sets(server, tiny_target):
    from uld_serve.server.launch import prepare

    state = prepare(str(tiny_target), {}, registry_path=server["work"] / "registry.json", served_name="target")
    assert sorted(state.config.forget_sets) == ["f1", "f2"]


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(server):
    """The module's last test: it drains the module's server (one server start less for CI)."""
    process, url, headers = server["process"], server["url"], {"Authorization": f"Bearer {KEY}"}
    first_token, events = threading.Event(), []

    def stream():
        with httpx.stream("POST", f"{url}/v1/completions", headers=headers, timeout=120,
                          json={"model": "f1", "prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True,
                                "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    first_token.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_token.wait(60)
    process.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    while httpx.get(f"{url}/health").status_code != 503:  # out of the load balancer's rotation
        assert time.time() < deadline, "/health never answered 503 while draining"
        time.sleep(0.1)
    late = httpx.post(f"{url}/v1/completions", headers=headers, timeout=60,
                      json={"model": "target", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})
    assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
    reader.join(120)
    # Finished, not cut: the stream ends properly and its last chunk stops at max_tokens (vLLM may
    # put two tokens in one chunk under load, so chunks are not counted).
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][len("data: "):])["choices"][0]["finish_reason"] == "length"
    assert process.wait(90) == 0
