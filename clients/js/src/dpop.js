// DPoP proofs (RFC 9449 §4.2) exactly as the gateway checks them (dynaseal/keys/dpop.py):
// header {typ: "dpop+jwt", alg, jwk}, claims {jti, htm, htu, iat, ath}; one new proof per request.
import { encodeBytes } from "./base64url.js";
import { accessTokenHash } from "./jwk.js";

/** htu: the request URL without query and fragment (RFC 9449 §4.2). */
export function proofUrl(url) {
  const parsed = new URL(String(url));
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
}

function randomJti() {
  return encodeBytes(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * A DPoP proof for one request.
 * @param {import("./holder.js").HolderKey} holder
 * @param {{method: string, url: string|URL, accessToken?: string, iat?: number, jti?: string}} request
 */
export async function createProof(holder, { method, url, accessToken, iat, jti }) {
  const claims = {
    jti: jti ?? randomJti(),
    htm: String(method).toUpperCase(),
    htu: proofUrl(url),
    iat: iat ?? Math.floor(Date.now() / 1000),
  };
  if (accessToken !== undefined) claims.ath = await accessTokenHash(accessToken);
  return holder.signJws({ typ: "dpop+jwt", jwk: holder.publicJwk }, claims);
}
