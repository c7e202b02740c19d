// The client's fetch: the bound key and a fresh proof on every request, whatever the SDK set; the key
// refreshed before it expires; one retry with a new key when the gateway says it expired.
import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeJson } from "../src/base64url.js";
import { DynasealClient, issuerKeySource } from "../src/client.js";
import { HolderKey, MemoryKeyStore, loadOrCreateHolder } from "../src/holder.js";
import { accessTokenHash } from "../src/jwk.js";
import { issuerToken, vectors, verifyJws } from "./support.js";

const GW = "http://127.0.0.1:8000/v1/chat/completions";

function recorder(answers = []) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url: String(url), init, headers: new Headers(init.headers) });
    const next = answers.shift();
    return next ? next() : new Response("{}", { status: 200 });
  };
  return { calls, fetchImpl };
}

function keySource(clock, lifetime = 600) {
  const minted = [];
  const getKey = async (holder) => {
    const now = Math.floor(clock.now);
    const token = await issuerToken({ iss: vectors.tenant, aud: "dynaseal", iat: now, exp: now + lifetime,
                                      jti: `k-${minted.length}`, cnf: { jwk: holder.publicJwk } });
    minted.push(token);
    return { token, expiresAt: now + lifetime };
  };
  return { getKey, minted };
}

test("the SDK's credential is replaced by the bound key and a proof for this request", async () => {
  const clock = { now: Date.now() / 1000 };
  const { calls, fetchImpl } = recorder();
  const source = keySource(clock);
  const client = new DynasealClient({ getKey: source.getKey, keyStore: new MemoryKeyStore(), fetch: fetchImpl,
                                      now: () => clock.now, alg: "ES256" });
  await client.fetch(`${GW}?x=1`, { method: "POST", body: "{}",
                                    headers: { authorization: "Bearer sk-what-the-sdk-set", "x-api-key": "k",
                                               "content-type": "application/json" } });
  await client.fetch(GW, { method: "POST", body: "{}", headers: new Headers({ Authorization: "Bearer dpop" }) });
  assert.equal(source.minted.length, 1, "one key for both requests");
  const [first, second] = calls;
  assert.equal(first.headers.get("authorization"), `DPoP ${source.minted[0]}`);
  assert.equal(first.headers.get("x-api-key"), null);
  assert.equal(first.headers.get("content-type"), "application/json");
  const holder = await client.holderKey();
  const proof = await verifyJws(first.headers.get("dpop"), holder.publicJwk, "ES256");
  assert.equal(proof.valid, true);
  assert.equal(proof.claims.htu, GW);
  assert.equal(proof.claims.htm, "POST");
  assert.equal(proof.claims.ath, await accessTokenHash(source.minted[0]));
  assert.notEqual(decodeJson(second.headers.get("dpop").split(".")[1]).jti, proof.claims.jti);
});

test("the key is refreshed before it expires, and concurrent callers share one refresh", async () => {
  const clock = { now: Date.now() / 1000 };
  const source = keySource(clock, 600);
  const client = new DynasealClient({ getKey: source.getKey, keyStore: new MemoryKeyStore(), now: () => clock.now,
                                      fetch: recorder().fetchImpl, refreshMarginSeconds: 60 });
  const [a, b] = await Promise.all([client.key(), client.key()]);
  assert.equal(a, b);
  assert.equal(source.minted.length, 1);
  clock.now += 530;
  assert.equal(await client.key(), a, "70 s left: still good");
  clock.now += 20;
  assert.notEqual(await client.key(), a, "50 s left: refreshed");
  assert.equal(source.minted.length, 2);
});

test("an expired_key answer gets one new key and one retry", async () => {
  const clock = { now: Date.now() / 1000 };
  const expired = () => new Response(JSON.stringify({ error: { code: "expired_key", message: "m", type: "t" } }),
                                     { status: 401 });
  const { calls, fetchImpl } = recorder([expired, expired]);
  const source = keySource(clock);
  const client = new DynasealClient({ getKey: source.getKey, keyStore: new MemoryKeyStore(), fetch: fetchImpl,
                                      now: () => clock.now });
  const response = await client.fetch(GW, { method: "POST", body: "{}" });
  assert.equal(response.status, 401, "a second refusal is the caller's");
  assert.equal(calls.length, 2);
  assert.equal(source.minted.length, 2);
  assert.equal(calls[1].headers.get("authorization"), `DPoP ${source.minted[1]}`);
});

test("the holder key is kept in the store and reused", async () => {
  const store = new MemoryKeyStore();
  const first = await loadOrCreateHolder(store, "device");
  const again = await loadOrCreateHolder(store, "device");
  assert.deepEqual(again.publicJwk, first.publicJwk);
  assert.equal(again.keyPair.privateKey, first.keyPair.privateKey);
  const other = await loadOrCreateHolder(store, "other");
  assert.notDeepEqual(other.publicJwk, first.publicJwk);
});

test("issuerKeySource asks /key/create for a key bound to the holder (holder_jwk)", async () => {
  const holder = await HolderKey.generate({ alg: "ES256" });
  const { calls, fetchImpl } = recorder([() => new Response(JSON.stringify({ token: "t.k.n", expires_at: 1 }))]);
  const getKey = issuerKeySource({ issuerUrl: "http://127.0.0.1:9000/", accessToken: async () => "session",
                                   scope: { max_tokens: 50 }, fetch: fetchImpl });
  assert.deepEqual(await getKey(holder), { token: "t.k.n", expiresAt: 1 });
  assert.equal(calls[0].url, "http://127.0.0.1:9000/key/create");
  assert.equal(calls[0].headers.get("authorization"), "Bearer session");
  assert.deepEqual(JSON.parse(calls[0].init.body), { max_tokens: 50, holder_jwk: holder.publicJwk });
  const refusing = issuerKeySource({ issuerUrl: "http://x", accessToken: "s",
                                     fetch: async () => new Response('{"error":{"message":"login expired"}}',
                                                                     { status: 401 }) });
  await assert.rejects(refusing(holder), /login expired/);
});

test("the client plugs into an SDK's fetch option as a plain function", async () => {
  const { calls, fetchImpl } = recorder();
  const client = new DynasealClient({ getKey: keySource({ now: Date.now() / 1000 }).getKey, fetch: fetchImpl,
                                      keyStore: new MemoryKeyStore() });
  const { fetch } = client;  // detached, as an SDK stores it
  await fetch(new URL(GW), { method: "POST", body: "{}" });
  assert.match(calls[0].headers.get("authorization"), /^DPoP /);
});
