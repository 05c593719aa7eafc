"""LLM-backed synthesis and judging over any OpenAI-compatible chat-completions endpoint.

- :class:`LLMSynthesizer` (``llm.py``): a trigger's evidence to checked memory items;
- :func:`judge` (``judge.py``): derived ratings for a sample of unrated interactions;
- :class:`ChatClient` (``client.py``): the HTTP client both share, with timeouts,
  retries, a circuit breaker, a concurrency limit and token/cost accounting;
- prompts are versioned files under ``prompts/<version>/`` (``templates.py``).

:class:`SynthesisUnavailable` means "ask again later": the trigger is kept.
"""

from learnloop.synthesis.breaker import CircuitBreaker
from learnloop.synthesis.client import ChatClient, ChatReply
from learnloop.synthesis.errors import CircuitOpen, RequestRejected, SynthesisUnavailable
from learnloop.synthesis.judge import as_event, judge
from learnloop.synthesis.llm import AsyncSynthesizer, LLMSynthesizer
from learnloop.synthesis.templates import load_prompts

__all__ = [
    "AsyncSynthesizer",
    "ChatClient",
    "ChatReply",
    "CircuitBreaker",
    "CircuitOpen",
    "LLMSynthesizer",
    "RequestRejected",
    "SynthesisUnavailable",
    "as_event",
    "judge",
    "load_prompts",
]
