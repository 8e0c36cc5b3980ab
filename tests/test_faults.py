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
