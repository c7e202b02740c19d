// base64url without padding (RFC 7515 §2), for bytes and for UTF-8 JSON.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** @param {Uint8Array} bytes */
export function encodeBytes(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** @param {string} text */
export function decodeToBytes(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new TypeError("not base64url");
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const binary = atob(padded);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** @param {unknown} value */
export function encodeJson(value) {
  return encodeBytes(encoder.encode(JSON.stringify(value)));
}

/** @param {string} text */
export function decodeJson(text) {
  return JSON.parse(decoder.decode(decodeToBytes(text)));
}

/** @param {string} text */
export function utf8(text) {
  return encoder.encode(text);
}

/** The claims of a compact JWS, unverified (the gateway verifies; the client only reads its own key). */
export function unverifiedClaims(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) throw new TypeError("not a compact JWS");
  return decodeJson(parts[1]);
}
