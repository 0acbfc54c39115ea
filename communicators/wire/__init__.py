"""The target <-> pod wire, sans-I/O: constants (:mod:`.const`: headers, paths,
limits) and the pure encoders, decoders and decisions both ends use
(:mod:`.frames`: ws frames, pipeline headers, direct-put URLs and outcomes).
Imports nothing else from aioetl."""

from aioetl.communicators.wire.frames import *  # noqa: F403
from aioetl.communicators.wire.frames import __all__  # noqa: F401
