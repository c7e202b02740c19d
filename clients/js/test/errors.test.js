// The gateway's refusals become typed errors a page can branch on.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as errors from "../src/errors.js";

function reply(status, body, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

const openaiShaped = (code, type = "x") => ({ error: { message: `m ${code}`, type, code, param: null } });

test("each code of the closed set has its class", async () => {
  const cases = [
    [401, "invalid_api_key", errors.InvalidKeyError, errors.AuthenticationError],
    [401, "expired_key", errors.ExpiredKeyError, errors.AuthenticationError],
    [401, "revoked_key", errors.RevokedKeyError, errors.AuthenticationError],
    [401, "invalid_dpop_proof", errors.DpopProofError, errors.AuthenticationError],
    [403, "model_not_allowed", errors.ModelNotAllowedError, errors.PermissionDeniedError],
    [403, "param_not_allowed", errors.ParamNotAllowedError, errors.PermissionDeniedError],
    [403, "origin_not_allowed", errors.OriginNotAllowedError, errors.PermissionDeniedError],
    [429, "key_exhausted", errors.KeyExhaustedError, errors.RateLimitError],
    [429, "insufficient_quota", errors.QuotaExceededError, errors.RateLimitError],
    [413, "request_too_large", errors.RequestTooLargeError, errors.DynasealError],
    [503, "authz_unavailable", errors.GatewayUnavailableError, errors.DynasealError],
  ];
  for (const [status, code, Kind, Parent] of cases) {
    const error = await errors.raiseForStatus(reply(status, openaiShaped(code), { "x-dynaseal-request-id": "r-1" }))
      .then(() => null, (e) => e);
    assert.ok(error instanceof Kind && error instanceof Parent && error instanceof errors.DynasealError, code);
    assert.equal(error.status, status);
    assert.equal(error.code, code);
    assert.equal(error.requestId, "r-1");
    assert.equal(error.message, `m ${code}`);
  }
});

test("rate limits carry retry-after and are retryable; exhausted keys are not", async () => {
  const limited = errors.errorFor(429, new Headers({ "retry-after": "7" }), openaiShaped("rate_limit_exceeded"));
  assert.ok(limited instanceof errors.RateLimitError);
  assert.equal(limited.retryAfter, 7);
  assert.equal(limited.retryable, true);
  assert.equal(errors.errorFor(429, new Headers(), openaiShaped("key_exhausted")).retryable, false);
  assert.equal(errors.errorFor(401, new Headers(), openaiShaped("invalid_api_key")).retryable, false);
});

test("Anthropic-shaped, unknown and non-JSON answers still map by status", async () => {
  const anthropic = errors.errorFor(403, new Headers(), { type: "error", error: { type: "permission_error", message: "no" } });
  assert.ok(anthropic instanceof errors.PermissionDeniedError);
  assert.equal(anthropic.message, "no");
  const unknown = errors.errorFor(418, new Headers(), openaiShaped("teapot"));
  assert.equal(unknown.constructor, errors.DynasealError);
  const html = await errors.raiseForStatus(new Response("<h1>bad gateway</h1>", { status: 502 })).catch((e) => e);
  assert.ok(html instanceof errors.DynasealError);
  assert.equal(html.status, 502);
  const ok = new Response("{}", { status: 200 });
  assert.equal(await errors.raiseForStatus(ok), ok);
});
