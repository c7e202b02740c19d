from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UsageEvent(_message.Message):
    __slots__ = ("request_id", "tenant", "jti", "event_id", "sub", "model", "stream", "status", "response_flags", "prompt_tokens", "completion_tokens", "total_tokens", "reserved", "usage_source", "started_at", "duration_ms", "path", "content", "content_truncated", "cb_json", "response_details", "shipped_at_ms", "root_jti", "chain", "cached_tokens", "reasoning_tokens", "price", "cost", "currency", "cost_micros", "unpriced", "reserved_cost_micros", "budget_tokens", "budget_cost_micros", "content_rule", "upstreams_tried", "given_back", "endpoint", "cache_write_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SUB_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    USAGE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CB_JSON_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    SHIPPED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ROOT_JTI_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_RULE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAMS_TRIED_FIELD_NUMBER: _ClassVar[int]
    GIVEN_BACK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    jti: str
    event_id: str
    sub: str
    model: str
    stream: bool
    status: int
    response_flags: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reserved: int
    usage_source: str
    started_at: str
    duration_ms: int
    path: str
    content: str
    content_truncated: bool
    cb_json: str
    response_details: str
    shipped_at_ms: int
    root_jti: str
    chain: _containers.RepeatedScalarFieldContainer[str]
    cached_tokens: int
    reasoning_tokens: int
    price: Price
    cost: str
    currency: str
    cost_micros: int
    unpriced: bool
    reserved_cost_micros: int
    budget_tokens: int
    budget_cost_micros: int
    content_rule: str
    upstreams_tried: str
    given_back: bool
    endpoint: str
    cache_write_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., jti: _Optional[str] = ..., event_id: _Optional[str] = ..., sub: _Optional[str] = ..., model: _Optional[str] = ..., stream: _Optional[bool] = ..., status: _Optional[int] = ..., response_flags: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., reserved: _Optional[int] = ..., usage_source: _Optional[str] = ..., started_at: _Optional[str] = ..., duration_ms: _Optional[int] = ..., path: _Optional[str] = ..., content: _Optional[str] = ..., content_truncated: _Optional[bool] = ..., cb_json: _Optional[str] = ..., response_details: _Optional[str] = ..., shipped_at_ms: _Optional[int] = ..., root_jti: _Optional[str] = ..., chain: _Optional[_Iterable[str]] = ..., cached_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., price: _Optional[_Union[Price, _Mapping]] = ..., cost: _Optional[str] = ..., currency: _Optional[str] = ..., cost_micros: _Optional[int] = ..., unpriced: _Optional[bool] = ..., reserved_cost_micros: _Optional[int] = ..., budget_tokens: _Optional[int] = ..., budget_cost_micros: _Optional[int] = ..., content_rule: _Optional[str] = ..., upstreams_tried: _Optional[str] = ..., given_back: _Optional[bool] = ..., endpoint: _Optional[str] = ..., cache_write_tokens: _Optional[int] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("currency", "input", "cached_input", "output", "reasoning", "cache_write")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_FIELD_NUMBER: _ClassVar[int]
    currency: str
    input: str
    cached_input: str
    output: str
    reasoning: str
    cache_write: str
    def __init__(self, currency: _Optional[str] = ..., input: _Optional[str] = ..., cached_input: _Optional[str] = ..., output: _Optional[str] = ..., reasoning: _Optional[str] = ..., cache_write: _Optional[str] = ...) -> None: ...
