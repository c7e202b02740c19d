"""OpenAI's embeddings API (`POST /v1/embeddings`), deterministic vectors and usage.

`prompt_tokens` = words of each string input, the length of each token-id array. Vectors have
`dimensions` (default 8) floats derived from the input's CRC32, as `float` lists or `base64`
(little-endian float32, as OpenAI sends them).
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

from mock_llm.completion import count_words
from mock_llm.errors import invalid_request

DEFAULT_DIMENSIONS = 8


def _inputs(raw: Any) -> list[str | list[int]]:
    """The inputs as a list: strings or token-id arrays."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [raw]
    if isinstance(raw, list) and raw and all(
            isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x)) for x in raw):
        return list(raw)
    raise invalid_request("'$.input' is invalid. Please check the API reference: "
                          "https://platform.openai.com/docs/api-reference.", "input")


def _vector(item: str | list[int], dimensions: int) -> list[float]:
    seed = zlib.crc32(item.encode() if isinstance(item, str) else bytes(str(item), "ascii"))
    return [round(((seed >> (i % 24)) % 1000) / 1000 - 0.5, 6) for i in range(dimensions)]


def embeddings_body(body: Any) -> dict[str, Any]:
    """Validate an embeddings body and build its answer."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("you must provide a model parameter", "model")
    items = _inputs(body.get("input"))
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= 3072:
        raise invalid_request("Invalid 'dimensions'.", "dimensions")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid_request("Invalid 'encoding_format': expected float or base64.", "encoding_format")
    data: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        vector = _vector(item, dimensions)
        encoded: Any = vector if fmt == "float" else base64.b64encode(
            struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count_words(i) if isinstance(i, str) else len(i) for i in items)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
