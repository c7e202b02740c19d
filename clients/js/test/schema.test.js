// contracts/dynamic-key.schema.json (shared with the Python tests, which validate with a full validator):
// the child keys this package mints use exactly the members the schema gives a child.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { decodeJson } from "../src/base64url.js";
import { mintChild } from "../src/child.js";
import { HolderKey } from "../src/holder.js";
import { issuerToken, vectors } from "./support.js";

const schema = JSON.parse(readFileSync(new URL("../../../contracts/dynamic-key.schema.json", import.meta.url)));

test("a child's claims are the schema's child members, the required ones present", async () => {
  const child = schema.$defs.child;
  const known = new Set([...Object.keys(child.properties), ...Object.keys(schema.$defs.limits.properties)]);
  const holder = await HolderKey.generate({ alg: "ES256" });
  const now = Math.floor(Date.now() / 1000);
  const parent = await issuerToken({ iss: vectors.tenant, aud: "dynaseal", iat: now, exp: now + 600, jti: "p",
                                     models: ["m"], max_tokens: 10, cnf: { jwk: holder.publicJwk } });
  const token = await mintChild(holder, parent, { models: ["m"], max_tokens: 5, uses: 1, rpm: 1, budget: 9,
                                                  params: { temperature: { max: 1 } }, ttl: 60,
                                                  cnf: { jkt: await holder.thumbprint() } });
  const claims = decodeJson(token.split(".")[1]);
  for (const name of Object.keys(claims)) assert.ok(known.has(name), `${name} is not in the schema`);
  for (const name of child.required) assert.ok(name in claims, `${name} is required`);
  assert.match(claims.prn, new RegExp(child.properties.prn.pattern));
  for (const name of child.not.anyOf.map((clause) => clause.required[0])) assert.ok(!(name in claims));
});
