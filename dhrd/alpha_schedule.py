"""The weight of the reasoning (LM) term over training: an axis beyond the paper, which
keeps alpha constant. Rationales may help most early, shaping the representation, while
late steps serve the classifier; these schedules test that.

* ``constant``: alpha throughout (the paper);
* ``linear`` / ``cosine``: from alpha down to ``alpha_floor`` at the last step;
* ``step``: alpha for the first ``alpha_switch_fraction`` of the steps, then ``alpha_floor``
  (rationale first, then the classifier on its own);
* ``ramp``: the reverse, ``alpha_floor`` at the first step rising linearly to alpha at
  ``alpha_switch_fraction`` of the steps, then alpha (the head finds the labels before the
  LM term moves the backbone: the remedy for a classification loss that stays at chance
  while the LM term learns; the paper's objective from the end of the ramp on).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

AlphaSchedule = Literal["constant", "linear", "cosine", "step", "ramp"]
ALPHA_SCHEDULES = get_args(AlphaSchedule)


def alpha_at(step: int, total_steps: int, alpha: float, schedule: str = "constant", floor: float = 0.0,
             switch_fraction: float = 0.5) -> float:
    """Alpha for optimizer step ``step`` (0-based) of ``total_steps``."""
    if schedule == "constant" or alpha == 0.0:
        return alpha
    progress = step / max(total_steps - 1, 1)
    if schedule == "linear":
        return floor + (alpha - floor) * (1.0 - progress)
    if schedule == "cosine":
        return floor + (alpha - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return alpha if step < switch_fraction * total_steps else floor
    if schedule == "ramp":
        end = switch_fraction * total_steps
        return alpha if step >= end else floor + (alpha - floor) * step / end
    raise ValueError(f"alpha_schedule={schedule!r} is not one of {', '.join(ALPHA_SCHEDULES)}")
