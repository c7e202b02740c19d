// The gateway's refusals as typed errors (README "Errors": the closed set of `error.code` values).

export class DynasealError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string|null, type?: string|null, param?: string|null,
   *          requestId?: string|null, retryAfter?: number|null}} [details]
   */
  constructor(message, details = {}) {
    super(message);
    this.name = new.target.name;
    this.status = details.status ?? null;
    this.code = details.code ?? null;
    this.type = details.type ?? null;
    this.param = details.param ?? null;
    this.requestId = details.requestId ?? null;
    this.retryAfter = details.retryAfter ?? null;
  }

  /** Whether sending the same request again may succeed (rate limits, an unavailable gateway). */
  get retryable() {
    return this.status === 429 && this.code === "rate_limit_exceeded" || this.status === 503;
  }
}

export class BadRequestError extends DynasealError {}
export class AuthenticationError extends DynasealError {}
export class InvalidKeyError extends AuthenticationError {}
export class ExpiredKeyError extends AuthenticationError {}
export class RevokedKeyError extends AuthenticationError {}
export class DpopProofError extends AuthenticationError {}
export class PermissionDeniedError extends DynasealError {}
export class ModelNotAllowedError extends PermissionDeniedError {}
export class ParamNotAllowedError extends PermissionDeniedError {}
export class OriginNotAllowedError extends PermissionDeniedError {}
export class RateLimitError extends DynasealError {}
export class KeyExhaustedError extends RateLimitError {}
export class QuotaExceededError extends RateLimitError {}
export class RequestTooLargeError extends DynasealError {}
export class GatewayUnavailableError extends DynasealError {}
/** A child key the client refuses to mint: it would ask for more than its parent. */
export class ChildKeyError extends DynasealError {}
/** The backend would not give this device a key (login expired, refused, unreachable). */
export class KeySourceError extends DynasealError {}

const BY_CODE = {
  invalid_api_key: InvalidKeyError,
  expired_key: ExpiredKeyError,
  revoked_key: RevokedKeyError,
  invalid_dpop_proof: DpopProofError,
  model_not_allowed: ModelNotAllowedError,
  param_not_allowed: ParamNotAllowedError,
  origin_not_allowed: OriginNotAllowedError,
  rate_limit_exceeded: RateLimitError,
  key_exhausted: KeyExhaustedError,
  insufficient_quota: QuotaExceededError,
  request_too_large: RequestTooLargeError,
  authz_unavailable: GatewayUnavailableError,
};

const BY_STATUS = { 400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
                    413: RequestTooLargeError, 429: RateLimitError, 503: GatewayUnavailableError };

/**
 * The typed error for a gateway answer's status, headers and parsed body (OpenAI- or Anthropic-shaped).
 * @param {number} status
 * @param {Headers} headers
 * @param {unknown} body
 */
export function errorFor(status, headers, body) {
  const error = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const code = typeof error.code === "string" ? error.code : null;
  const message = typeof error.message === "string" ? error.message : `the gateway answered ${status}`;
  const retry = Number(headers.get("retry-after"));
  const Kind = (code && BY_CODE[code]) || BY_STATUS[status] || DynasealError;
  return new Kind(message, {
    status, code, type: typeof error.type === "string" ? error.type : null,
    param: typeof error.param === "string" ? error.param : null,
    requestId: headers.get("x-dynaseal-request-id"),
    retryAfter: Number.isFinite(retry) && headers.has("retry-after") ? retry : null,
  });
}

/** Throw the typed error for a non-2xx gateway response (its body is read); return it unchanged otherwise. */
export async function raiseForStatus(response) {
  if (response.ok) return response;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  throw errorFor(response.status, response.headers, body);
}
