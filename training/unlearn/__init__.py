"""Weight-level unlearning methods, one file each, registered by name in base.METHODS (in
this order: the gradient-ascent family, then the G-effect paper's objectives, then MOLLM
and SOUL; `uld unlearn --help` and the comparison benchmark list them so)."""
from . import ga, graddiff, npo, simnpo, wga, tnpo, wtnpo, mollm, soul  # noqa: F401  (registration, in order)
from .base import METHODS, Method, Step, get_method, register  # noqa: F401
