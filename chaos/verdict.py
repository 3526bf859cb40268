"""What a checker concludes about a history, in one shape for every checker and the report.

Pure. `valid` is True (the property held), False (violated: `examples` show how) or None
(undecided, e.g. the linearizability search hit its budget). Whether the consistency level
*promises* the property is the runner's business (`expected`): a violation a level does not
promise is reported as expected, not hidden (e.g. `quorum` is not linearizable).
"""

from dataclasses import field
from typing import Any

from cluster.frozen import frozen


@frozen
class CheckResult:
    checker: str  # "set" | "convergence" | "session" | "linearizable" | ...
    valid: bool | None
    counts: dict[str, int | float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # at most a handful, human-readable
    promised: bool = True  # does the level under test promise this property?

    @property
    def verdict(self) -> str:
        """One word for the report: ok, violated, violated (not promised), unknown."""
        if self.valid is None:
            return "unknown"
        if self.valid:
            return "ok"
        return "violated" if self.promised else "violated (not promised)"

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": self.checker,
            "valid": self.valid,
            "verdict": self.verdict,
            "promised": self.promised,
            "counts": dict(self.counts),
            "examples": list(self.examples),
        }
