// JWK thumbprints (RFC 7638) and the access-token hash of a DPoP proof (RFC 9449 §4.2 `ath`).
import { encodeBytes, utf8 } from "./base64url.js";

// RFC 7638 §3.2: the required members of each key type, in lexicographic order.
const MEMBERS = { EC: ["crv", "kty", "x", "y"], OKP: ["crv", "kty", "x"], RSA: ["e", "kty", "n"] };

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** The public members a proof header or a `cnf.jwk` carries: never a private one. */
export function publicMembers(jwk) {
  const members = MEMBERS[jwk.kty];
  if (!members) throw new TypeError(`unsupported key type ${jwk.kty}`);
  return Object.fromEntries(members.map((name) => [name, jwk[name]]));
}

/** RFC 7638 SHA-256 thumbprint, base64url: what `cnf.jkt` holds. */
export async function thumbprint(jwk) {
  const members = MEMBERS[jwk.kty];
  if (!members) throw new TypeError(`unsupported key type ${jwk.kty}`);
  for (const name of members) {
    if (typeof jwk[name] !== "string") throw new TypeError(`jwk member ${name} is missing`);
  }
  // JSON.stringify of an object built in this order is RFC 7638's canonical form (no whitespace).
  const canonical = JSON.stringify(Object.fromEntries(members.map((name) => [name, jwk[name]])));
  return encodeBytes(await sha256(utf8(canonical)));
}

/** `ath`: base64url(SHA-256(ASCII(access token))). */
export async function accessTokenHash(token) {
  return encodeBytes(await sha256(utf8(token)));
}
