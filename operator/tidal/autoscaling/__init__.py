"""The scaling decision: a pure function of (observation, state, policy, now).

No I/O and no clock reads: the operator's loop, the simulator and the tests all call the same
`decide`, with real or synthetic time.
"""

from .decide import Decision, Observation, ScalerState, decide  # noqa: F401
from .policy import Policy  # noqa: F401
