// client.fetch inside the SDKs it is meant for (installed by `npm ci`; skipped when they are not): each
// SDK's own credential is replaced by the bound key and a proof for the URL the SDK called.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DynasealClient } from "../src/client.js";
import { MemoryKeyStore } from "../src/holder.js";
import { accessTokenHash } from "../src/jwk.js";
import { issuerToken, vectors, verifyJws } from "./support.js";

const BASE = "http://127.0.0.1:8000/v1";
const COMPLETION = { id: "c1", object: "chat.completion", created: 1, model: "deepseek-chat",
                     choices: [{ index: 0, finish_reason: "stop", message: { role: "assistant", content: "hello" } }],
                     usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } };
const MESSAGE = { id: "m1", type: "message", role: "assistant", model: "claude-x", stop_reason: "end_turn",
                  content: [{ type: "text", text: "hello" }], usage: { input_tokens: 3, output_tokens: 1 } };

async function optional(name) {
  try {
    return await import(name);
  } catch {
    return null;
  }
}

function boundClient(answer) {
  const calls = [];
  const client = new DynasealClient({
    keyStore: new MemoryKeyStore(), alg: "ES256",
    getKey: async (holder) => {
      const now = Math.floor(Date.now() / 1000);
      return { token: await issuerToken({ iss: vectors.tenant, aud: "dynaseal", iat: now, exp: now + 600,
                                          jti: "sdk", cnf: { jwk: holder.publicJwk } }) };
    },
    fetch: async (url, init) => {
      calls.push({ url: String(url), headers: new Headers(init.headers), body: init.body });
      return new Response(JSON.stringify(answer), { status: 200, headers: { "content-type": "application/json" } });
    },
  });
  return { client, calls };
}

async function assertBound(client, call, path) {
  assert.equal(call.url.split("?")[0], `${BASE.replace(/\/v1$/, "")}${path}`);
  const token = await client.key();
  assert.equal(call.headers.get("authorization"), `DPoP ${token}`);
  assert.equal(call.headers.get("x-api-key"), null);
  const proof = await verifyJws(call.headers.get("dpop"), (await client.holderKey()).publicJwk, "ES256");
  assert.equal(proof.valid, true);
  assert.equal(proof.claims.htu, call.url.split("?")[0]);
  assert.equal(proof.claims.ath, await accessTokenHash(token));
}

test("the openai SDK", async (t) => {
  const sdk = await optional("openai");
  if (!sdk) return t.skip("openai is not installed (npm ci)");
  const { client, calls } = boundClient(COMPLETION);
  const openai = new sdk.default({ baseURL: BASE, apiKey: "dpop", fetch: client.fetch, maxRetries: 0 });
  const reply = await openai.chat.completions.create({ model: "deepseek-chat", messages: [{ role: "user", content: "hi" }] });
  assert.equal(reply.choices[0].message.content, "hello");
  await assertBound(client, calls[0], "/v1/chat/completions");
});

test("the Anthropic SDK", async (t) => {
  const sdk = await optional("@anthropic-ai/sdk");
  if (!sdk) return t.skip("@anthropic-ai/sdk is not installed (npm ci)");
  const { client, calls } = boundClient(MESSAGE);
  const anthropic = new sdk.default({ baseURL: BASE.replace(/\/v1$/, ""), apiKey: "dpop", fetch: client.fetch,
                                      maxRetries: 0 });
  const reply = await anthropic.messages.create({ model: "claude-x", max_tokens: 10,
                                                  messages: [{ role: "user", content: "hi" }] });
  assert.equal(reply.content[0].text, "hello");
  await assertBound(client, calls[0], "/v1/messages");
});

test("the Vercel AI SDK (createOpenAI({ fetch }))", async (t) => {
  const ai = await optional("ai");
  const provider = await optional("@ai-sdk/openai");
  if (!ai || !provider) return t.skip("ai / @ai-sdk/openai are not installed (npm ci)");
  const { client, calls } = boundClient(COMPLETION);
  const openai = provider.createOpenAI({ baseURL: BASE, apiKey: "dpop", fetch: client.fetch });
  const { text } = await ai.generateText({ model: openai.chat("deepseek-chat"), prompt: "hi", maxRetries: 0 });
  assert.equal(text, "hello");
  await assertBound(client, calls[0], "/v1/chat/completions");
});
