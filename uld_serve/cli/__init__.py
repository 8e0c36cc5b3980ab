"""`uld`: the command line, one module per job (data, train, eval, serve). Every user mistake
ends in one sentence on stderr and exit code 2."""
import signal
import sys
import threading

from ..core.errors import UldError
from . import data, train, eval, serve  # noqa: F401,I001  (the commands register on the app, in this order)
from .app import app


def _exit_on_sigterm(signum, frame):
    print("error: terminated", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv=None):
    # Python's default SIGTERM ends the process without running finally blocks or atexit, which
    # leaves vLLM's engine processes running; as SystemExit, a terminated job closes its engine
    # (and keeps its partial output for a resume). `uld serve`'s server installs its own handler.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    try:
        app(args=argv)  # click reports usage errors itself, with exit code 2
    except UldError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
