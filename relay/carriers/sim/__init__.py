"""The embedded carrier: numbers from ranges reserved for fiction, calls and texts in-process."""

from relay.carriers.sim.carrier import SIM_RANGES, SimCarrier

__all__ = ["SIM_RANGES", "SimCarrier"]
