"""uld-serve: decode-time unlearning (ULD) with per-request forget sets.

The Python API (`UldLLM`, `SamplingParams`, api.py) is imported on first use, so that
`import uld_serve.core...` stays light."""
__version__ = "0.1.0"
__all__ = ["UldLLM", "SamplingParams", "RequestOutput"]


def __getattr__(name):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'uld_serve' has no attribute {name!r}")
