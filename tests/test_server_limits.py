"""`uld serve`'s policies on loopback: an enforced forget set (enforce.py), the limits
(limits.py: n and max_tokens caps, the request timeout, the bound on requests in flight),
the audit trail and a kill -9 during an admin change (the drain on SIGTERM is test_server's last test)."""
import json
import re
import signal
import threading
import time

import httpx
import openai
import pytest

from helpers import assert_user_error, uld
from test_server import ADMIN, KEY, start_server

pytestmark = pytest.mark.vllm

HEADERS = {"Authorization": f"Bearer {KEY}"}
LIMITS = ("--max-tokens", "480", "--max-n", "2", "--max-in-flight", "2", "--request-timeout", "1", "--drain-timeout", "60",
          "--enforce", "f2")  # f2's manifest alpha, 1.5, is the floor


@pytest.fixture(scope="module")
def limited(tiny_target, forget_sets, tmp_path_factory):
    work = tmp_path_factory.mktemp("limited")
    process, url = start_server(tiny_target, forget_sets, work, *LIMITS, "--audit-log", str(work / "audit.jsonl"))
    yield {"url": url, "process": process, "work": work}
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=90)


def post(url, **body):
    return httpx.post(f"{url}/v1/completions", headers=HEADERS, timeout=60,
                      json={"model": "target", "prompt": "Once upon a time", "temperature": 0, **body})


def running_requests(url) -> float:
    metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert "vllm:num_requests_running{" in metrics
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", metrics, re.M))


def test_the_enforced_forget_set_serves_every_request_and_cannot_be_dropped(limited):
    url = limited["url"]
    served = post(url, max_tokens=4)
    assert served.status_code == 200 and served.json()["uld"] == {"forget_set": "f2", "alpha": 1.5, "relative_top": 0.01,
                                                                          "repetition_penalty": 0.5, "frequency_penalty": None}
    assert post(url, max_tokens=4, model="f2", alpha=2.0).json()["uld"]["alpha"] == 2.0  # above the floor: allowed
    for body, fragment in (({"forget_set": None}, "cannot ask for no forget set"), ({"model": "f1"}, "cannot ask for forget set 'f1'"),
                           ({"forget_set": "f1"}, "cannot ask for forget set 'f1'"), ({"alpha": 1.0}, "below the floor 1.5")):
        refused = post(url, max_tokens=4, **body)
        assert refused.status_code == 400 and fragment in refused.json()["error"]["message"], refused.text
    admin = {"Authorization": f"Bearer {ADMIN}"}
    target = next(m for m in httpx.get(f"{url}/v1/models", headers=HEADERS).json()["data"] if m["id"] == "target")
    assert target["uld"]["enforced"] == {"forget_set": "f2", "min_alpha": 1.5}
    assert httpx.delete(f"{url}/admin/forget-sets/f2", headers=admin).status_code == 409
    assert "f2" in httpx.get(f"{url}/admin/forget-sets", headers=admin).json()


def test_an_enforced_name_that_is_not_served_is_refused_before_vllm_starts(tiny_target, forget_sets, tmp_path):
    args = ["serve", "--target", tiny_target, "--forget-set", f"f1={forget_sets['f1']}", "--registry", tmp_path / "r.json"]
    assert_user_error(uld(*args, "--enforce", "nope", check=False), "--enforce names 'nope'")
    assert_user_error(uld(*args, "--enforce", "f1=9", check=False), "the floor after '=' must be an alpha")


def test_n_and_max_tokens_over_the_caps_get_400_and_a_missing_length_is_capped(limited):
    url = limited["url"]
    for body, fragment in (({"n": 3}, "n must be an integer of at most 2"), ({"max_tokens": 481}, "at most 480")):
        refused = post(url, **body)
        assert refused.status_code == 400 and fragment in refused.json()["error"]["message"], refused.text
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="uld serve --max-tokens"):
        client.chat.completions.create(model="target", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=500)
    two = post(url, n=2, max_tokens=4, temperature=1.0, seed=0)
    assert two.status_code == 200 and len(two.json()["choices"]) == 2, two.text


def test_a_request_past_the_timeout_gets_504_or_its_stream_ends_and_vllm_aborts_it(limited):
    url = limited["url"]
    started = time.time()
    slow = post(url, max_tokens=480, ignore_eos=True)  # hundreds of steps: seconds on this CPU
    assert slow.status_code == 504 and "uld serve --request-timeout" in slow.json()["error"]["message"]
    assert time.time() - started < 10
    with httpx.stream("POST", f"{url}/v1/completions", headers=HEADERS, timeout=60,
                      json={"model": "target", "prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True,
                            "stream": True}) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert 0 < len(events) < 480 and events[-1] != "data: [DONE]"  # cut short, not finished
    deadline = time.time() + 20
    while running_requests(url) and time.time() < deadline:
        time.sleep(0.2)
    assert running_requests(url) == 0
    assert post(url, max_tokens=4).status_code == 200  # the server carries on


def test_requests_beyond_the_bound_in_flight_get_429_with_retry_after(limited):
    """Six slow requests at once against a bound of two: those beyond it are refused at once
    with Retry-After, the others run into the 1 s timeout (no ordering between them assumed)."""
    url, answers = limited["url"], []

    def slow():
        response = post(url, max_tokens=480, ignore_eos=True)
        answers.append((response.status_code, response.headers.get("retry-after")))

    threads = [threading.Thread(target=slow) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (429, "1") in answers and {status for status, _ in answers} <= {429, 504}, answers
    assert all(after == "1" for status, after in answers if status == 429)
    assert post(url, max_tokens=4).status_code == 200


def test_the_audit_trail_records_each_request_and_admin_change_without_content(limited, forget_sets):
    url, admin = limited["url"], {"Authorization": f"Bearer {ADMIN}"}
    with httpx.stream("POST", f"{url}/v1/completions", headers={**HEADERS, "X-Request-Id": "probe-stream"}, timeout=60,
                      json={"model": "target", "prompt": "Once upon a time", "max_tokens": 4, "ignore_eos": True,
                            "stream": True}) as stream:
        assert stream.headers["x-request-id"] == "probe-stream"
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert events and all(e["choices"] for e in events)  # no usage event the client did not ask for
    assert post(url, max_tokens=3, alpha=1.0).status_code == 400
    added = httpx.post(f"{url}/admin/forget-sets", headers=admin, json={"name": "f3", "path": str(forget_sets["f1"])})
    assert added.status_code == 201
    assert httpx.delete(f"{url}/admin/forget-sets/f3", headers=admin).status_code == 200
    lines = [json.loads(line) for line in (limited["work"] / "audit.jsonl").read_text().splitlines()]
    streamed = next(line for line in lines if line.get("request_id") == "probe-stream")
    assert streamed["forget_set"] == "f2" and streamed["alpha"] == 1.5 and streamed["status"] == 200
    assert streamed["completion_tokens"] == 4 and streamed["prompt_tokens"] > 0 and streamed["model"] == "target"
    assert streamed["key_id"] and KEY not in json.dumps(lines) and "prompt" not in streamed and "output" not in streamed
    assert any(line.get("status") == 400 and line["event"] == "completion" for line in lines)
    assert [(line["action"], line["forget_set"]) for line in lines if line["event"] == "admin"] == [("add", "f3"), ("remove", "f3")]
    metrics = httpx.get(f"{url}/metrics", headers=admin).text
    assert re.search(r'uld_tokens_total\{forget_set="f2",kind="completion"\} [1-9]', metrics)
    assert 'uld_request_seconds_count{forget_set="f2"}' in metrics


def test_a_server_killed_during_an_admin_add_restarts_on_a_consistent_registry(limited, tiny_target, forget_sets):
    """The module's last test: it kills the module's server (one server start less for CI)."""
    import os
    import shutil

    from uld_serve.server.launch import prepare
    from uld_serve.server.registry import read_entries

    process, url, work = limited["process"], limited["url"], limited["work"]
    before = set(read_entries(work / "registry.json"))
    copy = shutil.copytree(forget_sets["f1"], work / "f6")
    def add():
        try:
            httpx.post(f"{url}/admin/forget-sets", headers={"Authorization": f"Bearer {ADMIN}"},
                       json={"name": "f6", "path": str(copy)}, timeout=30)
        except httpx.HTTPError:
            pass  # the server died under it

    adding = threading.Thread(target=add)
    adding.start()
    time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    adding.join()
    entries = read_entries(work / "registry.json")  # whole: written atomically or not at all
    assert {"f1", "f2"} <= before <= set(entries) <= before | {"f6"}
    state = prepare(str(tiny_target), {}, registry_path=work / "registry.json", served_name="target")
    assert sorted(state.config.forget_sets) == sorted(entries)  # every entry loads again
