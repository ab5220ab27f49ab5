"""The embedded carrier: numbers from ranges reserved for fiction, calls and texts in-process."""

from relay.carriers.sim.carrier import (
    DEFAULT_HANDSET,
    SIM_RANGES,
    SimCarrier,
    SimText,
    sim_country_of,
)

__all__ = ["DEFAULT_HANDSET", "SIM_RANGES", "SimCarrier", "SimText", "sim_country_of"]
