"""The audit file itself (server/audit.py): content only when asked for, appended, rotated by size."""
import json

from uld_serve.server.audit import AuditLog

APPLIED = {"forget_set": "f1", "alpha": 0.75, "relative_top": 0.01}


def record(log, request_id, prompt="Who is Basil?", output="A writer."):
    log.completion(request_id=request_id, key_id="k1", route="/v1/completions", model="f1", applied=APPLIED, status=200,
                   usage={"prompt_tokens": 5, "completion_tokens": 3}, seconds=0.1, prompt=prompt, output=output)


def test_content_is_recorded_only_when_asked_and_lines_are_appended(tmp_path):
    path = tmp_path / "audit" / "audit.jsonl"
    record(AuditLog(path), "a")
    record(AuditLog(path, content=True), "b")  # a restart appends to the same file
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert first["request_id"] == "a" and "prompt" not in first and "output" not in first
    assert second["prompt"] == "Who is Basil?" and second["output"] == "A writer." and second["completion_tokens"] == 3


def test_the_file_is_rotated_by_size(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_mib=1 / 1024, backups=2)  # 1 KiB
    for i in range(40):
        record(log, f"r{i}")
    assert path.exists() and (tmp_path / "audit.jsonl.1").exists() and (tmp_path / "audit.jsonl.2").exists()
    assert not (tmp_path / "audit.jsonl.3").exists()
    assert json.loads(path.read_text().splitlines()[-1])["request_id"] == "r39"


def test_off_writes_nothing(tmp_path):
    record(AuditLog(None), "a")
    assert not list(tmp_path.iterdir())


def test_a_failed_write_marks_the_log_unhealthy_until_a_line_is_written_again(tmp_path, monkeypatch):
    """A full disk, simulated at os.write: the line that does not fit is cut back out (no torn
    line), the log turns unhealthy (the server then refuses completions with 507), the lines
    already written stay, and the next line that can be written makes it healthy again.
    (tests/test_faults.py fills a real tmpfs under a running server.)"""
    import os

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    record(log, "kept")
    real_write = os.write

    def full_disk(fd, data):
        if len(data) > 10:
            return real_write(fd, data[:10])  # part of the line fits
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("uld_serve.server.audit.os.write", full_disk)
    record(log, "lost")
    assert not log.healthy
    monkeypatch.undo()  # space again
    record(log, "back")
    assert log.healthy
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == ["kept", "back"]
