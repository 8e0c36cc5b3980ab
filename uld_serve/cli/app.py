"""The `uld` Typer application and what its commands share: every command only parses its
arguments and calls one library function; user mistakes raise UldError (core/errors.py)."""
from pathlib import Path
from typing import List

import typer

from ..core.errors import UldError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Decode-time unlearning (ULD): train forget sets, evaluate and serve them.")
eval_app = typer.Typer(add_completion=False, no_args_is_help=True, help="TOFU evaluation.")
app.add_typer(eval_app, name="eval")

DTYPE = typer.Option("fp32", help="fp32 or bf16")
TARGET = typer.Option(..., help="the target checkpoint directory")


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UldError(f"{out} already exists; pass --force to replace it")


def parse_pairs(items: List[str], flag: str, value_name: str) -> dict:
    """KEY=VALUE items of a repeatable flag, as a dict."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UldError(f"{flag} takes {value_name}, got {item!r}")
        pairs[key] = value
    return pairs


def parse_forget_sets(items: List[str]) -> dict:
    """--forget-set NAME=ADAPTER_DIR, repeatable: name -> directory."""
    return parse_pairs(items, "--forget-set", "NAME=ADAPTER_DIR")
