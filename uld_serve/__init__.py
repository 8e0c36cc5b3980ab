"""uld-serve: decode-time unlearning (ULD) with per-request forget sets."""
__version__ = "0.1.0"
