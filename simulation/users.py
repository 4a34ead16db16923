"""The simulated user: position-based examination, noisy picks, at most ``max_picks`` of them.

The position-based click model (Craswell et al., WSDM 2008, "An experimental comparison of click
position-bias models"; the form used by Joachims et al., WSDM 2017, "Unbiased Learning-to-Rank
with Biased Feedback", and by ULTRA's simulators): the user examines the source shown at rank
``k`` (1 = first) with probability ``(1 / k) ** eta`` whatever it is, and picks an examined
source with a probability that depends only on its true grade. ``eta`` is the strength of the
position bias (0: every source is examined). Noise, as in those simulators: an examined relevant
source is skipped with probability ``1 - relevant_pick``, an examined irrelevant one is picked
with probability ``irrelevant_pick``; graded relevance interpolates between the two with the
gain ``(2 ** g - 1) / (2 ** g_max - 1)``. The app's user picks at most ``max_picks`` (3) sources,
top to bottom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PositionBasedUser:
    """Args:
    eta: position-bias strength: rank ``k`` (1-based) is examined with ``(1 / k) ** eta``.
    relevant_pick: probability of picking an examined source of the top grade.
    irrelevant_pick: probability of picking an examined source of grade 0 (noise).
    max_picks: the most sources one impression picks.
    max_grade: the top grade of the labels (1 for binary labels, 3 for TREC's).
    """

    eta: float = 1.0
    relevant_pick: float = 0.95
    irrelevant_pick: float = 0.1
    max_picks: int = 3
    max_grade: float = 1.0

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        for name in ("relevant_pick", "irrelevant_pick"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.max_picks < 1:
            raise ValueError(f"max_picks must be at least 1, got {self.max_picks}")
        if self.max_grade <= 0:
            raise ValueError(f"max_grade must be > 0, got {self.max_grade}")

    def examination(self, n: int) -> np.ndarray:
        """``[n]`` probabilities that ranks 1..n are examined: the true propensities."""
        return (1.0 / np.arange(1, n + 1, dtype=np.float64)) ** self.eta

    def pick_probability(self, grades: Sequence[float]) -> np.ndarray:
        """Probability of picking an examined source, per true grade."""
        grades = np.clip(np.asarray(grades, dtype=np.float64), 0.0, self.max_grade)
        gain = (2.0**grades - 1.0) / (2.0**self.max_grade - 1.0)
        return self.irrelevant_pick + (self.relevant_pick - self.irrelevant_pick) * gain

    def picks(
        self, grades_in_display_order: Sequence[float], rng: np.random.Generator
    ) -> list[int]:
        """Ranks (0-based, in display order) the user picks, top to bottom, at most
        ``max_picks``. Draws the same random numbers whatever the outcome, so that one seed
        gives one impression."""
        n = len(grades_in_display_order)
        examined = rng.random(n) < self.examination(n)
        picked = rng.random(n) < self.pick_probability(grades_in_display_order)
        chosen = np.flatnonzero(examined & picked)
        return [int(k) for k in chosen[: self.max_picks]]
