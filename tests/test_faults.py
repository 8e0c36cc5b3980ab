"""Faults a production server and batch job meet, each a test: a killed `uld generate`, a full
disk under the registry, corrupt files at start (those that need a running server are in
test_server_limits.py)."""
import json
import os
import signal
import subprocess
import time

import pytest

from uld_serve.engine.config import EngineConfig
from uld_serve.server.registry import Registry

from helpers import ULD, assert_user_error, uld


def test_a_killed_generate_resumes_without_lost_or_duplicated_lines(tiny_target, forget_sets, tmp_path):
    rows = [{"id": i, "prompt": f"Tell me about author number {i}.", "max_tokens": 6, "forget_set": ["f1", None][i % 2]}
            for i in range(150)]  # three chunks of 64
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["generate", "--target", tiny_target, "--forget-set", f"f1={forget_sets['f1']}", "--input", source,
              "--engine", "reference", "--device", "cpu"]
    out, partial = tmp_path / "out.jsonl", tmp_path / ".out.jsonl.partial"
    job = subprocess.Popen([*ULD, *map(str, common), "--output", str(out)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (partial.exists() and len(partial.read_text().splitlines()) > 1) and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not out.exists() and partial.exists(), "the job ended before it could be killed"
    uld(*common, "--output", out)
    straight = tmp_path / "straight.jsonl"
    uld(*common, "--output", straight)
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in resumed] == list(range(150))  # every line once, in input order
    assert resumed == [json.loads(line) for line in straight.read_text().splitlines()]
    assert not partial.exists()


@pytest.mark.vllm
def test_a_terminated_generate_leaves_no_engine_process_behind(tiny_target, forget_sets, tmp_path):
    # SIGTERM is what `kill` and Kubernetes send: vLLM's engine core and worker (same process
    # group) must end with the job, and the finished chunks stay for a resume
    rows = [{"id": i, "prompt": f"Tell me about author number {i}.", "max_tokens": 6} for i in range(1280)]  # 20 chunks
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, partial, log = tmp_path / "out.jsonl", tmp_path / ".out.jsonl.partial", tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file, not a pipe: vLLM's start-up log would fill a pipe and stall the job
        job = subprocess.Popen([*ULD, "generate", "--target", str(tiny_target), "--forget-set", f"f1={forget_sets['f1']}",
                                "--input", str(source), "--output", str(out), "--max-model-len", "512"],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.time() + 300
        while not (partial.exists() and partial.read_text().strip()) and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert job.poll() is None and not out.exists(), "the job ended before it could be terminated"
        job.terminate()
        assert job.wait(timeout=120) == 128 + signal.SIGTERM
        assert "error: terminated" in log.read_text()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                os.killpg(job.pid, 0)  # any process left in the job's group?
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("vLLM's engine processes outlived the terminated job")
        assert partial.read_text().strip() and not out.exists()
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_full_disk_under_the_registry_changes_nothing(tiny_target, forget_sets, tmp_path, monkeypatch):
    config = EngineConfig.build(tiny_target, {"f1": forget_sets["f1"]})
    registry = Registry(tmp_path / "registry.json", config, "target", [forget_sets["f2"].parent])
    registry.save()
    before = (tmp_path / "registry.json").read_text()
    fs = registry.validate("f2", str(forget_sets["f2"]))

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("uld_serve.server.registry.write_json_atomic", full_disk)
    for change in (lambda: registry.add(fs), lambda: registry.remove("f1")):
        with pytest.raises(OSError):
            change()
        assert (tmp_path / "registry.json").read_text() == before and sorted(config.forget_sets) == ["f1"]


def test_a_server_whose_audit_trail_cannot_be_written_does_not_start(tiny_target, forget_sets, tmp_path):
    result = uld("serve", "--target", tiny_target, "--forget-set", f"f1={forget_sets['f1']}", "--registry", tmp_path / "r.json",
                 "--forget-set-root", tmp_path, "--audit-log", "/dev/full", check=False)  # /dev/full: every write fails
    assert_user_error(result, "the audit trail /dev/full cannot be written; the server does not start without it")


@pytest.mark.vllm
def test_a_disk_that_fills_under_the_audit_trail_refuses_completions_and_undoes_admin_changes(tiny_target, forget_sets, tmp_path):
    """The audit trail on a 1 MiB tmpfs that fills while serving: the request whose line does
    not fit was served, the next ones get 507, an admin add or remove is undone (507), and once
    space is free again requests are served and recorded."""
    import shutil

    import httpx
    from test_server import ADMIN, KEY, start_server

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    work = tmp_path / "serve"
    work.mkdir()
    shutil.copytree(forget_sets["f1"], tmp_path / "f3")
    process, url = start_server(tiny_target, forget_sets, work, "--audit-log", str(disk / "audit.jsonl"))
    client, admin = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN}"}

    def chat(request_id):
        return httpx.post(f"{url}/v1/chat/completions", headers={**client, "X-Request-Id": request_id}, timeout=60,
                          json={"model": "f1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})

    def settled(condition):  # a completion's line is written just after its response is sent
        deadline = time.time() + 30
        while not condition():
            assert time.time() < deadline, "the audit trail did not reach the expected state"
            time.sleep(0.1)

    def recorded(request_id):
        return lambda: f'"request_id": "{request_id}"' in (disk / "audit.jsonl").read_text()

    def write_errors():
        metrics = httpx.get(f"{url}/metrics", headers=admin).text
        return float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("uld_audit_write_errors_total")))

    try:
        assert chat("before").status_code == 200
        settled(recorded("before"))
        fill(disk, disk / "audit.jsonl")
        assert chat("unrecorded").status_code == 200  # its line is the one that finds the disk full
        settled(lambda: write_errors() >= 1)
        refused = chat("refused")
        assert refused.status_code == 507 and "cannot be written" in refused.json()["error"]["message"]
        registry = (work / "registry.json").read_text()
        added = httpx.post(f"{url}/admin/forget-sets", headers=admin, json={"name": "f3", "path": str(tmp_path / "f3")}, timeout=60)
        assert added.status_code == 507 and "nothing was added" in added.json()["error"]["message"]
        removed = httpx.delete(f"{url}/admin/forget-sets/f2", headers=admin, timeout=60)
        assert removed.status_code == 507 and "nothing was removed" in removed.json()["error"]["message"]
        assert sorted(httpx.get(f"{url}/admin/forget-sets", headers=admin).json()) == ["f1", "f2"]
        assert (work / "registry.json").read_text() == registry
        (disk / "filler").unlink()  # space again: the next line is written and the trail is healthy
        assert chat("freed").status_code == 507  # refused before its line, which is written
        settled(recorded("freed"))
        assert chat("after").status_code == 200
        settled(recorded("after"))
        lines = [json.loads(line) for line in (disk / "audit.jsonl").read_text().splitlines()]
        assert lines[0]["event"] == "start" and sorted(lines[0]["forget_sets"]) == ["f1", "f2"]
        ids = [line.get("request_id") for line in lines[1:] if line["event"] != "filler"]
        assert ids == ["before", "freed", "after"]  # whole lines only, and no line for an undone admin change
    finally:
        process.terminate()
        process.wait(timeout=60)
        subprocess.run(["umount", str(disk)])


def fill(disk, audit):
    """Fill the tmpfs: a file takes every free page, then one whole JSON line takes what is left
    of the audit file's last page (tmpfs counts pages, so that room is the audit file's alone)."""
    with open(disk / "filler", "wb", buffering=0) as filler:
        for chunk in (65536, 1):
            with pytest.raises(OSError):
                while True:
                    filler.write(b"x" * chunk)
    fd = os.open(audit, os.O_WRONLY | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        try:
            room = os.write(fd, b"x" * 8192)  # a short write: what still fits
        except OSError:
            room = 0
        os.ftruncate(fd, size)
        head, tail = b'{"event": "filler", "pad": "', b'"}\n'
        if room >= len(head) + len(tail):
            line = head + b"x" * (room - len(head) - len(tail)) + tail
            assert os.write(fd, line) == len(line)
    finally:
        os.close(fd)


@pytest.mark.parametrize("content, fragment", [
    (b'{"f1": "/x", ', "is not valid JSON"), (b"\xff\xfe", "is not UTF-8 text"), (b'["f1"]', "is not a forget-set registry")])
def test_a_corrupt_registry_is_named_at_start(tiny_target, tmp_path, content, fragment):
    (tmp_path / "registry.json").write_bytes(content)
    assert_user_error(uld("serve", "--target", tiny_target, "--registry", tmp_path / "registry.json", check=False), fragment)


def test_a_corrupt_manifest_is_named_at_start(tiny_target, forget_sets, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(forget_sets["f1"], broken)
    (broken / "uld.json").write_text((broken / "uld.json").read_text()[:40])  # truncated
    assert_user_error(uld("serve", "--target", tiny_target, "--forget-set", f"b={broken}", "--registry", tmp_path / "r.json",
                          check=False), "is not valid JSON")
