"""Checkers: pure functions from a history (or plain data) to a `CheckResult`.

Each module states its exact rules in its docstring. Pure: no clock, no I/O, no randomness.
"""

from chaos.checkers.convergence import check_convergence
from chaos.checkers.linearizable import check_linearizable
from chaos.checkers.session import check_sessions
from chaos.checkers.set_checker import check_set

__all__ = ["check_convergence", "check_linearizable", "check_sessions", "check_set"]
