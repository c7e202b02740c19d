// Narrowed child keys: what the gateway takes (dynaseal/keys/attenuation.py), and every widening refused.
import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeJson } from "../src/base64url.js";
import { CHILD_TYP, chainOf, mintChild } from "../src/child.js";
import { ChildKeyError } from "../src/errors.js";
import { HolderKey } from "../src/holder.js";
import { issuerToken, vectors, verifyJws } from "./support.js";

const NOW = Math.floor(Date.now() / 1000);

async function parentFor(holder, claims = {}) {
  return issuerToken({ iss: vectors.tenant, aud: "dynaseal", iat: NOW, nbf: NOW, exp: NOW + 600, jti: "p-1",
                       models: ["gpt-4o-mini", "gpt-4o"], max_tokens: 200, uses: 10,
                       params: { temperature: { min: 0, max: 1.0 }, allow: ["temperature", "stop"] },
                       cnf: { jwk: holder.publicJwk }, ...claims });
}

for (const alg of ["ES256", "EdDSA"]) {
  test(`a narrowed ${alg} child is signed by the holder and carries its parent`, async () => {
    const holder = await HolderKey.generate({ alg });
    const parent = await parentFor(holder);
    const child = await mintChild(holder, parent, { models: ["gpt-4o-mini"], max_tokens: 50, uses: 1, ttl: 120 });
    const { valid, header, claims } = await verifyJws(child, holder.publicJwk, alg);
    assert.equal(valid, true);
    assert.deepEqual(header, { typ: CHILD_TYP, alg });
    assert.equal(claims.prn, parent);
    assert.equal(claims.iss, vectors.tenant);
    assert.equal(claims.aud, "dynaseal");
    assert.deepEqual(claims.models, ["gpt-4o-mini"]);
    assert.equal(claims.max_tokens, 50);
    assert.equal(claims.uses, 1);
    assert.ok(claims.exp <= NOW + 600 && claims.exp >= NOW + 119);
    assert.ok(typeof claims.jti === "string" && claims.jti !== "p-1");
  });
}

test("a child that leaves limits out inherits them and expires with its parent", async () => {
  const holder = await HolderKey.generate({ alg: "ES256" });
  const parent = await parentFor(holder);
  const claims = decodeJson((await mintChild(holder, parent)).split(".")[1]);
  assert.equal(claims.exp, NOW + 600);
  for (const name of ["models", "max_tokens", "uses", "params"]) assert.equal(claims[name], undefined, name);
});

test("every widening is refused before anything is signed", async () => {
  const holder = await HolderKey.generate({ alg: "ES256" });
  const parent = await parentFor(holder);
  const widenings = {
    "a model the parent may not use": { models: ["gpt-4o-mini", "o4-mini"] },
    "more max_tokens": { max_tokens: 201 },
    "more uses": { uses: 11 },
    "a budget (the parent has none: the tenant's is not known here, but counts stay ≤ the chain's)": null,
    "a later expiry": { ttl: 601 },
    "a wider temperature": { params: { temperature: { max: 1.5 } } },
    "a lower temperature minimum": { params: { temperature: { min: -1 } } },
    "an unbounded temperature": { params: { temperature: { max: null } } },
    "more allowed parameters": { params: { allow: ["temperature", "stop", "logit_bias"] } },
    "another sub": { sub: "someone-else" },
    "its own event_id": { event_id: "x" },
    "zero uses": { uses: 0 },
  };
  for (const [what, limits] of Object.entries(widenings)) {
    if (limits === null) continue;
    await assert.rejects(mintChild(holder, parent, limits), ChildKeyError, what);
  }
});

test("a grandchild is held to the tightest level above it", async () => {
  const holder = await HolderKey.generate({ alg: "EdDSA" });
  const parent = await parentFor(holder);
  const child = await mintChild(holder, parent, { uses: 3, cnf: { jwk: holder.publicJwk } });
  assert.equal(chainOf(child).length, 2);
  await assert.rejects(mintChild(holder, child, { uses: 4 }), ChildKeyError);  // its parent's 3
  await assert.rejects(mintChild(holder, child, { models: ["o4-mini"] }), ChildKeyError);  // the root's models
  const grandchild = await mintChild(holder, child, { uses: 2 });
  assert.equal(chainOf(grandchild).length, 3);
});

test("only the parent's holder may mint, and only when the parent names one", async () => {
  const holder = await HolderKey.generate({ alg: "ES256" });
  const thief = await HolderKey.generate({ alg: "ES256" });
  const parent = await parentFor(holder);
  await assert.rejects(mintChild(thief, parent, { uses: 1 }), /holder key/);
  const jktOnly = await parentFor(holder, { cnf: { jkt: await holder.thumbprint() } });
  await assert.rejects(mintChild(holder, jktOnly, { uses: 1 }), /cnf\.jwk/);
});

test("children made by the Python side verify here", async () => {
  for (const [alg, vector] of Object.entries(vectors.holders)) {
    const { valid, header, claims } = await verifyJws(vector.child, vector.public_jwk, alg);
    assert.equal(valid, true, alg);
    assert.equal(header.typ, CHILD_TYP);
    assert.equal(claims.prn, vector.parent);
    assert.deepEqual(chainOf(vector.child).map((c) => c.jti), [`interop-parent-${alg}`, `interop-child-${alg}`]);
  }
});
