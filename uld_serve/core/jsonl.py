"""Reading JSONL input: one JSON object per line, blank lines skipped, one-sentence errors."""
import json
from pathlib import Path

from .errors import UldError


def read_objects(path, missing: str = "input file", where: str = ""):
    """Yield (line number, object) for each non-blank line. `missing` names the file in the
    error for a missing file; `where` prefixes the line in the other errors."""
    if not Path(path).is_file():
        raise UldError(f"{missing} {path} does not exist")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UldError(f"{missing} {path} is not UTF-8 text (byte {e.start})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UldError(f"{where}line {line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UldError(f"{where}line {line_no}: expected a JSON object")
        yield line_no, row
