"""HTTP layer: the Starlette ASGI app exposing the mock OpenAI endpoints, fault hooks and recording."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import AsyncIterator, Iterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mock_llm.completion import build_completion
from mock_llm.embeddings_api import embeddings_body
from mock_llm.errors import ApiError, hook_error, invalid_request, json_response
from mock_llm.messages_api import AnthropicError, build_message, count_input, message_body, message_events
from mock_llm.recording import RecordingMiddleware, RequestRecorder
from mock_llm.render import completion_body, new_completion_id, now, stream_events
from mock_llm.responses_api import build_response, response_body, response_events

MODEL_IDS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "deepseek-chat", "mock-large", "claude-sonnet-4-5",
                              "text-embedding-3-small")
MODELS_CREATED = 1_700_000_000  # fixed so /v1/models responses are byte-stable
STATUS_HEADER = "x-mock-status"
DELAY_HEADER = "x-mock-delay-ms"
CHUNK_DELAY_HEADER = "x-mock-chunk-delay-ms"
# Stream shape hooks for gateway tests: cut the SSE bytes into pieces of N bytes (events split
# across writes, paced by x-mock-chunk-delay-ms), and end lines with CRLF instead of LF.
SPLIT_HEADER = "x-mock-split-bytes"
NEWLINE_HEADER = "x-mock-sse-newline"
# `continuous`: usage in every chunk, as vLLM's stream_options.continuous_usage_stats (a switch of the
# mock's own, so a test can ask for it through a gateway that refuses that member from clients).
USAGE_HEADER = "x-mock-usage"
# Drop the connection after N SSE frames, as a provider's load balancer resetting a stream mid-generation.
ABORT_HEADER = "x-mock-abort-after-frames"
# Messages streams: an Anthropic `error` event (overloaded_error) after N text deltas, as when overloaded mid-answer.
STREAM_ERROR_HEADER = "x-mock-stream-error-after"


class StreamAborted(Exception):
    """Raised inside a streamed body so the server drops the connection without ending the response."""
_PARSE_ERROR = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def _header_int(request: Request, name: str) -> int:
    """Read a non-negative integer hook header (0 when absent)."""
    raw = request.headers.get(name)
    if raw is None:
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise invalid_request(f"Invalid '{name}' header: expected a non-negative integer.", name)
    return value


def _header_ms(request: Request, name: str) -> float:
    """Read a non-negative millisecond hook header and return seconds (0 when absent)."""
    return _header_int(request, name) / 1000


def _model_object(model_id: str) -> dict[str, object]:
    """Build one OpenAI ``model`` object."""
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock-llm"}


def _reshaped(frames: Iterator[bytes], split: int, crlf: bool) -> Iterator[bytes]:
    """The same SSE bytes with CRLF line ends and/or cut into `split`-byte pieces."""
    if crlf:
        frames = (frame.replace(b"\n", b"\r\n") for frame in frames)
    if not split:
        yield from frames
        return
    data = b"".join(frames)
    for at in range(0, len(data), split):
        yield data[at:at + split]


async def _paced(frames: Iterator[bytes], delay: float, abort_after: int = 0) -> AsyncIterator[bytes]:
    """Yield SSE frames, sleeping ``delay`` seconds between consecutive frames; drop the connection after
    ``abort_after`` frames when set."""
    if abort_after:
        for count, frame in enumerate(frames):
            if count == abort_after:
                raise StreamAborted(f"stream dropped after {abort_after} frames ({ABORT_HEADER})")
            if count:
                await asyncio.sleep(delay)
            yield frame
        return
    if not delay:
        # Unpaced streams go out in one write: per-frame sends through uvicorn/h11 cut benchmark
        # throughput ~3x (measured ~700 vs ~1900 streams/s) and SSE clients parse events, not writes.
        # Tests that need observable incremental delivery set x-mock-chunk-delay-ms.
        yield b"".join(frames)
        return
    first = True
    for frame in frames:
        if not first:
            await asyncio.sleep(delay)
        first = False
        yield frame


class _Handlers:
    """Route endpoints bound to one app's configuration (API key) and recorder."""

    def __init__(self, api_key: str | None, recorder: RequestRecorder) -> None:
        self.api_key = api_key
        self.recorder = recorder

    async def _preamble(self, request: Request) -> None:
        """Apply the delay hook, authentication and the status hook common to every /v1 route."""
        delay = _header_ms(request, DELAY_HEADER)
        if delay:
            await asyncio.sleep(delay)  # asyncio sleep: never blocks other in-flight requests
        if self.api_key is not None:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            # Constant-time compare so the mock does not model a timing side channel the real API lacks.
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                shown = f"{token[:3]}***{token[-4:]}" if len(token) > 8 else "***"
                message = (
                    f"Incorrect API key provided: {shown}."
                    if token
                    else "You didn't provide an API key. You need to provide your API key in an Authorization "
                    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                )
                raise ApiError(401, message, code="invalid_api_key")
        raw_status = request.headers.get(STATUS_HEADER)
        if raw_status is not None:
            try:
                status = int(raw_status.strip())
            except ValueError:
                status = 0
            if not 400 <= status <= 599:
                raise invalid_request(f"Invalid '{STATUS_HEADER}' header: expected 400-599.", STATUS_HEADER)
            raise hook_error(status)

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions: answer deterministically, as JSON or as an SSE stream."""
        await self._preamble(request)
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise invalid_request(_PARSE_ERROR) from None
        usage_mode = request.headers.get(USAGE_HEADER, "final")
        if usage_mode not in ("final", "continuous"):
            raise invalid_request(f"Invalid '{USAGE_HEADER}' header: expected final or continuous.", USAGE_HEADER)
        completion = build_completion(body, continuous_usage=usage_mode == "continuous")
        completion_id, created = new_completion_id(), now()
        headers = {"x-request-id": "req_" + secrets.token_hex(16)}
        if not completion.stream:
            return json_response(completion_body(completion, completion_id, created), headers=headers)
        chunk_delay = _header_ms(request, CHUNK_DELAY_HEADER)
        split = _header_int(request, SPLIT_HEADER)
        newline = request.headers.get(NEWLINE_HEADER, "lf")
        if newline not in ("lf", "crlf"):
            raise invalid_request(f"Invalid '{NEWLINE_HEADER}' header: expected lf or crlf.", NEWLINE_HEADER)
        frames = _reshaped(stream_events(completion, completion_id, created), split, newline == "crlf")
        headers["cache-control"] = "no-cache"
        abort_after = _header_int(request, ABORT_HEADER)
        return StreamingResponse(_paced(frames, chunk_delay, abort_after), media_type="text/event-stream",
                                 headers=headers)

    async def _json_body(self, request: Request) -> object:
        raw = await request.body()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise invalid_request(_PARSE_ERROR) from None

    def _sse(self, request: Request, frames: Iterator[bytes], headers: dict[str, str]) -> Response:
        """A streamed answer with the pacing and abort hooks chat has."""
        headers["cache-control"] = "no-cache"
        return StreamingResponse(_paced(frames, _header_ms(request, CHUNK_DELAY_HEADER),
                                        _header_int(request, ABORT_HEADER)),
                                 media_type="text/event-stream", headers=headers)

    async def responses(self, request: Request) -> Response:
        """POST /v1/responses: OpenAI's Responses API, as JSON or as its SSE event sequence."""
        await self._preamble(request)
        run = build_response(await self._json_body(request))
        headers = {"x-request-id": "req_" + secrets.token_hex(16)}
        if run.request.get("stream") is True:
            return self._sse(request, response_events(run), headers)
        return json_response(response_body(run), headers=headers)

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings: deterministic vectors with usage."""
        await self._preamble(request)
        return json_response(embeddings_body(await self._json_body(request)),
                             headers={"x-request-id": "req_" + secrets.token_hex(16)})

    def _anthropic_preamble(self, request: Request) -> None:
        """Anthropic's checks: the key in x-api-key, an anthropic-version, the status hook in its shape."""
        if self.api_key is not None:
            # x-api-key, or Authorization: Bearer as the anthropic SDK (2.x) sends its api_key.
            scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
            sent = request.headers.get("x-api-key") or (bearer.strip() if scheme.lower() == "bearer" else "")
            if not hmac.compare_digest(sent.encode(), self.api_key.encode()):
                raise AnthropicError(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise AnthropicError(400, "anthropic-version: header is required")
        raw_status = request.headers.get(STATUS_HEADER)
        if raw_status is not None:
            status = int(raw_status) if raw_status.strip().isdigit() else 500
            raise AnthropicError(status, f"Injected error {status} (x-mock-status).")

    async def _anthropic_body(self, request: Request) -> object:
        delay = _header_ms(request, DELAY_HEADER)
        if delay:
            await asyncio.sleep(delay)
        self._anthropic_preamble(request)
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise AnthropicError(400, "There was an issue with your request body: invalid JSON") from None

    async def messages(self, request: Request) -> Response:
        """POST /v1/messages: Anthropic's Messages API, as JSON or as its SSE event sequence."""
        try:
            body = await self._anthropic_body(request)
            run = build_message(body)
            headers = {"request-id": "req_" + secrets.token_hex(12)}
            if isinstance(body, dict) and body.get("stream") is True:
                error_after = _header_int(request, STREAM_ERROR_HEADER)
                return self._sse(request, message_events(run, error_after), headers)
            return json_response(message_body(run), headers=headers)
        except ApiError as exc:  # a hook header's own validation
            return AnthropicError(exc.status, exc.message).to_response()
        except AnthropicError as exc:
            return exc.to_response()

    async def count_tokens(self, request: Request) -> Response:
        """POST /v1/messages/count_tokens: the prompt's input tokens, all of them."""
        try:
            body = await self._anthropic_body(request)
            uncached, read, written, _, _ = count_input(body)
            return json_response({"input_tokens": uncached + read + written})
        except AnthropicError as exc:
            return exc.to_response()

    async def list_models(self, request: Request) -> Response:
        """GET /v1/models: list the advertised model ids."""
        await self._preamble(request)
        return json_response({"object": "list", "data": [_model_object(m) for m in MODEL_IDS]})

    async def retrieve_model(self, request: Request) -> Response:
        """GET /v1/models/{model}: return one advertised model or a 404 ``model_not_found``."""
        await self._preamble(request)
        model_id: str = request.path_params["model"]
        if model_id not in MODEL_IDS:
            raise ApiError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
        return json_response(_model_object(model_id))

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: liveness probe."""
        return json_response({"status": "ok"})

    async def get_requests(self, request: Request) -> Response:
        """GET /_mock/requests: every recorded request, oldest first."""
        return json_response(self.recorder.snapshot())

    async def clear_requests(self, request: Request) -> Response:
        """DELETE /_mock/requests: forget all recorded requests."""
        return json_response({"cleared": self.recorder.clear()})


async def _api_error(request: Request, exc: Exception) -> Response:
    """Render :class:`ApiError` raised anywhere in a handler."""
    assert isinstance(exc, ApiError)
    return exc.to_response()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Turn Starlette routing errors (404 unknown path, 405 wrong method) into OpenAI-shaped errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
        return ApiError(404, message, code="unknown_url").to_response()
    if exc.status_code == 405:
        message = f"Method {request.method} not allowed for {request.url.path}"
        return ApiError(405, message, code="method_not_allowed").to_response()
    return ApiError(exc.status_code, str(exc.detail)).to_response()


async def _server_error(request: Request, exc: Exception) -> Response:
    """Keep even unexpected crashes OpenAI-shaped so the SDK raises InternalServerError."""
    return ApiError(500, "The server had an error while processing your request.", type_="server_error").to_response()


def create_app(api_key: str | None = None) -> Starlette:
    """Build the mock app; ``api_key=None`` accepts any (or no) bearer token."""
    recorder = RequestRecorder()
    h = _Handlers(api_key, recorder)
    routes = [
        Route("/v1/chat/completions", h.chat_completions, methods=["POST"]),
        Route("/v1/responses", h.responses, methods=["POST"]),
        Route("/v1/embeddings", h.embeddings, methods=["POST"]),
        Route("/v1/messages", h.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", h.count_tokens, methods=["POST"]),
        Route("/v1/models", h.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", h.retrieve_model, methods=["GET"]),
        Route("/healthz", h.healthz, methods=["GET"]),
        Route("/_mock/requests", h.get_requests, methods=["GET"]),
        Route("/_mock/requests", h.clear_requests, methods=["DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RecordingMiddleware, recorder=recorder)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )
    # Exposed so in-process tests can inspect or clear recordings without going through HTTP.
    app.state.recorder = recorder
    app.state.api_key = api_key
    return app
