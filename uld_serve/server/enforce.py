"""An enforced forget set (`uld serve --enforce NAME[=MIN_ALPHA]`): the deployment for a
deletion request, where the public model name always forgets. Every completion that names
the target, with or without a forget-set field, is served with the enforced set; a request
may not turn it off, choose another set, or lower alpha below the floor (default: the set's
manifest alpha), and an admin may not remove it while serving."""
from dataclasses import dataclass
from typing import Optional

from ..core.artifact import ForgetSet
from ..core.errors import UldError
from ..core.settings import check_alpha, manifest_defaults


@dataclass(frozen=True)
class Enforced:
    forget_set: str
    min_alpha: float

    @classmethod
    def build(cls, spec: Optional[str], forget_sets: dict) -> Optional["Enforced"]:
        """From `NAME` or `NAME=MIN_ALPHA`, checked against the forget sets being served."""
        if not spec:
            return None
        name, _, floor = spec.partition("=")
        if name not in forget_sets:
            raise UldError(f"--enforce names {name!r}, which is not among the forget sets: {', '.join(forget_sets) or 'none'}")
        fs: ForgetSet = forget_sets[name]
        try:
            min_alpha = check_alpha(float(floor)) if floor else manifest_defaults(fs.manifest)[0]
        except (UldError, ValueError):
            raise UldError(f"--enforce {spec}: the floor after '=' must be an alpha in range") from None
        return cls(name, min_alpha)

    def choose(self, forget_set: Optional[str], explicit: bool) -> str:
        """The forget set a request is served with: the enforced one, or a 400's reason."""
        if explicit and forget_set != self.forget_set:
            chosen = "no forget set" if forget_set is None else f"forget set {forget_set!r}"
            raise ValueError(f"forget set {self.forget_set!r} is enforced on this server; a request cannot ask for {chosen}")
        return self.forget_set

    def check_alpha(self, alpha: float) -> None:
        if alpha < self.min_alpha:
            raise ValueError(f"alpha {alpha} is below the floor {self.min_alpha} of forget set {self.forget_set!r}, "
                             "which is enforced on this server")

    def as_dict(self) -> dict:
        return {"forget_set": self.forget_set, "min_alpha": self.min_alpha}
