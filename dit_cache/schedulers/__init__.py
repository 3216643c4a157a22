"""Cache schedules (not noise schedulers): fixed intervals, explicit lists, LeMiCa's lexicographic-minimax path
solver, and the speedup -> threshold search that replays a policy's rule on a profile."""

from .budget import replay, replay_fraction, search_threshold
from .intervals import explicit, fixed_interval
from .lemica import ScheduleError, budget_for_speedup, solve_lexminimax
from .targets import TOLERANCE, SpeedupError

__all__ = [
    "ScheduleError",
    "SpeedupError",
    "TOLERANCE",
    "budget_for_speedup",
    "explicit",
    "fixed_interval",
    "replay",
    "replay_fraction",
    "search_threshold",
    "solve_lexminimax",
]
