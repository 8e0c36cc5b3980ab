"""`uld`: the command line, one module per job (data, train, eval, serve). Every user mistake
ends in one sentence on stderr and exit code 2."""
import sys

from ..core.errors import UldError
from . import data, train, eval, serve  # noqa: F401,I001  (the commands register on the app, in this order)
from .app import app


def main(argv=None):
    try:
        app(args=argv)  # click reports usage errors itself, with exit code 2
    except UldError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
