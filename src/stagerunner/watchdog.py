"""The supervisor's watch on the producer's loop (pure: no processes, no clock of its own).

The producer says Alive every half heartbeat, with how many tasks its consumers hold. A
producer silent past its limit is stuck outside its loop (a database peer that stopped
answering raises nothing on loopback) and is killed with its consumers: while it holds
tasks, at 80% of the node expiry, so that no job of ours outlives a rescue elsewhere;
holding nothing, after HANG_S. The supervisor wakes when the limit runs out
(``wait``), not a loop tick later, so the bound is the limit itself.
"""

from __future__ import annotations

from dataclasses import dataclass

HANG_S = 10.0  # silent this long while holding nothing: stuck
HELD_FRACTION = 0.8  # of the node expiry, while holding tasks
MIN_WAIT_S = 0.01


@dataclass
class Watchdog:
    expiry_s: float
    alive_at: float = 0.0  # when the producer last said Alive (or was started)
    held: int = 0

    def alive(self, now: float, held: int) -> None:
        self.alive_at, self.held = now, held

    def limit(self) -> float:
        return self.expiry_s * HELD_FRACTION if self.held else HANG_S

    def wait(self, now: float, longest: float) -> float:
        """How long the supervisor may wait before it must look again."""
        return max(MIN_WAIT_S, min(longest, self.alive_at + self.limit() - now))

    def silent(self, now: float) -> float | None:
        """Seconds of silence once past the limit, else None. Says so once: the watch
        starts anew (the producer's exit drives what follows)."""
        silence = now - self.alive_at
        if silence <= self.limit():
            return None
        self.alive_at = now
        return silence
