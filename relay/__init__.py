"""The conversation relay: phone numbers, web calls and SMS for AI agents."""

import os

# NumPy's OpenBLAS starts a thread per core that spins after every call. The relay's only
# matrix products are small (Whisper's mel filterbank); one thread does them in a seventh of
# the CPU and leaves the cores to the speech models. It must be set before NumPy is first
# imported; a setting of the operator's wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

__all__ = ["__version__"]
