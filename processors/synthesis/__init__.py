"""Rule synthesis: from a trigger's evidence to candidate memory items.

:class:`OfflineSynthesizer` needs no LLM and no network and is the default; an LLM
synthesizer implements the same :class:`Synthesizer` protocol.
"""

from processors.synthesis.base import SynthesisResult, Synthesizer
from processors.synthesis.guard import injection_reason, is_injection
from processors.synthesis.offline import OfflineSynthesizer

__all__ = [
    "OfflineSynthesizer",
    "SynthesisResult",
    "Synthesizer",
    "injection_reason",
    "is_injection",
]
