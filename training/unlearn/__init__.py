"""Weight-level unlearning methods, one file each, registered by name in base.METHODS."""
from . import ga, graddiff, mollm, npo, simnpo, soul, tnpo, wga, wtnpo  # noqa: F401  (registration)
from .base import METHODS, Method, Step, get_method, register  # noqa: F401
