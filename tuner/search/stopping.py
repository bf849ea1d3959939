"""Early stop: end a search whose best has not improved by ``min_gain`` for ``patience`` evaluations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StallDetector:
    patience: int
    minimize: bool = True
    min_gain: float = 0.01  # a relative improvement smaller than this does not reset the count
    _best: float | None = None
    _since: int = 0

    def update(self, best: float | None) -> bool:
        """Feed the best value after one more evaluation; True once the search has stalled."""
        if best is not None:
            if self._best is None:
                improved = True
            elif self.minimize:
                improved = best < self._best * (1 - self.min_gain)
            else:
                improved = best > self._best * (1 + self.min_gain)
            if improved:
                self._best, self._since = best, 0
                return False
        self._since += 1
        return self._since >= self.patience
