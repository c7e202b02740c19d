// Test helpers: an independent JWS check with WebCrypto, and the interop vectors shared with Python.
import { readFileSync } from "node:fs";
import { decodeJson, decodeToBytes, utf8 } from "../src/base64url.js";

export const vectors = JSON.parse(readFileSync(new URL("../../../contracts/interop/vectors.json", import.meta.url)));

const PARAMS = {
  ES256: [{ name: "ECDSA", namedCurve: "P-256" }, { name: "ECDSA", hash: "SHA-256" }],
  EdDSA: [{ name: "Ed25519" }, { name: "Ed25519" }],
};

/** Whether a compact JWS verifies with a public JWK; returns its header and claims. */
export async function verifyJws(token, jwk, alg) {
  const [header, payload, signature] = token.split(".");
  const [importParams, signParams] = PARAMS[alg];
  const key = await crypto.subtle.importKey("jwk", jwk, importParams, false, ["verify"]);
  const valid = await crypto.subtle.verify(signParams, key, decodeToBytes(signature), utf8(`${header}.${payload}`));
  return { valid, header: decodeJson(header), claims: decodeJson(payload), signature: decodeToBytes(signature) };
}

/** A token signed by the interop issuer (EdDSA), as a tenant backend would mint it. */
export async function issuerToken(claims) {
  const { HolderKey } = await import("../src/holder.js");
  const issuer = await HolderKey.fromPrivateJwk(vectors.issuer.private_jwk, "EdDSA");
  return issuer.signJws({ kid: vectors.issuer.public_jwk.kid, typ: "JWT" }, claims);
}
