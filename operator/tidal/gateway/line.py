"""The requests the activator holds for one service, oldest first.

A request joins the line when the service has no ready replica, or when every ready replica already
has its capacity in flight. A finished request frees one place: it wakes the oldest waiter only
(1,000 held requests and 100 completions a second would otherwise be 100,000 wake-ups a second).
A new replica wakes everyone: each takes a place on it or joins again.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Line:
    def __init__(self) -> None:
        self._turns: deque[asyncio.Future] = deque()

    def __len__(self) -> int:
        return len(self._turns)

    def join(self) -> asyncio.Future:
        """A future that completes when it may be this request's turn (it must check again)."""
        turn = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        return turn

    def leave(self, turn: asyncio.Future) -> None:
        """A request that stops waiting (served elsewhere, timed out, refused) gives up its place."""
        if not turn.done():
            turn.cancel()
            try:
                self._turns.remove(turn)
            except ValueError:
                pass

    def wake_next(self) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def wake_all(self) -> None:
        while self._turns:
            self.wake_next()
