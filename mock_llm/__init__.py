"""Mock OpenAI-compatible chat-completions upstream for Dynaseal's tests, demo and benchmarks.

It speaks enough of OpenAI's API (``/v1/chat/completions`` incl. SSE streaming, ``/v1/models``) for the
official ``openai`` SDK to work unchanged, answers deterministically with a word-count "tokenizer", and
adds test-only hooks: fault injection via ``x-mock-status`` / ``x-mock-delay-ms`` /
``x-mock-chunk-delay-ms`` request headers and a record of received requests at ``/_mock/requests``.
Run it with ``python -m mock_llm --port 8100``.
"""

from mock_llm.app import create_app
from mock_llm.completion import DEFAULT_COMPLETION_WORDS, build_completion, count_words

__all__ = ["DEFAULT_COMPLETION_WORDS", "build_completion", "count_words", "create_app"]
