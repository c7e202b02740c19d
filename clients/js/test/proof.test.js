// DPoP proofs (RFC 9449): the RFC's own example, and proofs this package makes, checked independently.
import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeJson } from "../src/base64url.js";
import { createProof, proofUrl } from "../src/dpop.js";
import { HolderKey } from "../src/holder.js";
import { accessTokenHash, thumbprint } from "../src/jwk.js";
import { vectors, verifyJws } from "./support.js";

const URL_ = "https://gw.example/v1/chat/completions";

test("the RFC 9449 example proof verifies, with the RFC's jkt and ath", async () => {
  const rfc = vectors.rfc9449;
  const header = decodeJson(rfc.proof.split(".")[0]);
  const { valid, claims } = await verifyJws(rfc.proof, header.jwk, "ES256");
  assert.equal(valid, true);
  assert.equal(await thumbprint(header.jwk), rfc.jkt);
  assert.deepEqual(claims, { jti: rfc.jti, htm: rfc.method, htu: rfc.url, iat: rfc.iat });
  assert.equal(await accessTokenHash(rfc.access_token), rfc.ath);
});

test("published thumbprints", async () => {
  for (const { jwk, jkt } of vectors.thumbprints) assert.equal(await thumbprint(jwk), jkt);
  // Optional members change nothing; a missing required one is an error, never a different hash.
  const { jwk, jkt } = vectors.thumbprints[0];
  assert.equal(await thumbprint({ ...jwk, kid: "k", use: "sig", alg: "EdDSA" }), jkt);
  await assert.rejects(thumbprint({ kty: "OKP", crv: "Ed25519" }));
});

for (const alg of ["ES256", "EdDSA"]) {
  test(`a ${alg} proof has exactly the members the gateway checks`, async () => {
    const holder = await HolderKey.generate({ alg });
    const token = "eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJ0In0.c2ln";
    const before = Math.floor(Date.now() / 1000);
    const proof = await createProof(holder, { method: "post", url: `${URL_}?debug=1#frag`, accessToken: token });
    const { valid, header, claims, signature } = await verifyJws(proof, holder.publicJwk, alg);
    assert.equal(valid, true);
    assert.deepEqual(Object.keys(header).sort(), ["alg", "jwk", "typ"]);
    assert.equal(header.typ, "dpop+jwt");
    assert.equal(header.alg, alg);
    assert.equal(header.jwk.d, undefined, "never a private member");
    assert.deepEqual(header.jwk, holder.publicJwk);
    assert.deepEqual(Object.keys(claims).sort(), ["ath", "htm", "htu", "iat", "jti"]);
    assert.equal(claims.htm, "POST");
    assert.equal(claims.htu, URL_, "query and fragment are not part of htu");
    assert.ok(claims.iat >= before && claims.iat <= before + 5);
    assert.equal(claims.ath, await accessTokenHash(token));
    assert.equal(signature.length, 64, "JWS signature form (r||s for ES256), not DER");
    const again = await createProof(holder, { method: "POST", url: URL_, accessToken: token });
    assert.notEqual(decodeJson(again.split(".")[1]).jti, claims.jti, "a new jti per proof");
  });
}

test("the ath binds the proof to one access token", async () => {
  const holder = await HolderKey.generate({ alg: "ES256" });
  const a = decodeJson((await createProof(holder, { method: "POST", url: URL_, accessToken: "a.b.c" })).split(".")[1]);
  const b = decodeJson((await createProof(holder, { method: "POST", url: URL_, accessToken: "a.b.d" })).split(".")[1]);
  assert.notEqual(a.ath, b.ath);
  const none = decodeJson((await createProof(holder, { method: "POST", url: URL_ })).split(".")[1]);
  assert.equal(none.ath, undefined);
});

test("htu keeps scheme, host, port and path as the request's", () => {
  assert.equal(proofUrl("http://127.0.0.1:8000/v1/chat/completions?x=1"), "http://127.0.0.1:8000/v1/chat/completions");
  assert.equal(proofUrl("https://gw.example:443/v1/models"), "https://gw.example/v1/models");
});

test("the private key cannot be exported", async () => {
  for (const alg of ["ES256", "EdDSA"]) {
    const holder = await HolderKey.generate({ alg });
    assert.equal(holder.keyPair.privateKey.extractable, false);
    await assert.rejects(crypto.subtle.exportKey("jwk", holder.keyPair.privateKey));
    await assert.rejects(crypto.subtle.exportKey("pkcs8", holder.keyPair.privateKey));
  }
  const { publicKey, privateKey } = await crypto.subtle.generateKey(
    { name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
  assert.throws(() => new HolderKey({ publicKey, privateKey }, "ES256", { kty: "EC" }), /extractable/);
});

test("proofs made by the Python side verify here", async () => {
  for (const [alg, holder] of Object.entries(vectors.holders)) {
    const { valid, header, claims } = await verifyJws(holder.proof, holder.public_jwk, alg);
    assert.equal(valid, true, alg);
    assert.equal(header.typ, "dpop+jwt");
    assert.equal(await thumbprint(header.jwk), holder.jkt);
    assert.equal(claims.htu, vectors.url);
    assert.equal(claims.ath, await accessTokenHash(holder.parent));
    assert.equal(claims.ath, holder.ath);
  }
});

test("a key imported from the vectors signs what Python verifies the same way", async () => {
  for (const [alg, vector] of Object.entries(vectors.holders)) {
    const holder = await HolderKey.fromPrivateJwk(vector.private_jwk, alg);
    assert.equal(await holder.thumbprint(), vector.jkt);
    assert.equal(holder.keyPair.privateKey.extractable, false);
  }
});
