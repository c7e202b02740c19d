// Against a running stack (tests/test_js_client.py starts it): DYNASEAL_ISSUER and DYNASEAL_GATEWAY (…/v1).
// Logs in as client1, gets a key bound to a fresh holder key, and calls the gateway through the openai SDK
// (plain and streaming) and the Vercel AI SDK; then the same key in a plain SDK, without its holder key.
// Prints what happened as JSON.
import { createOpenAI } from "@ai-sdk/openai";
import { streamText } from "ai";
import OpenAI from "openai";
import { DynasealClient, issuerKeySource, MemoryKeyStore } from "../src/index.js";

const issuer = process.env.DYNASEAL_ISSUER;
const gateway = process.env.DYNASEAL_GATEWAY;
const login = await fetch(`${issuer}/user/login`, {
  method: "POST", headers: { "content-type": "application/json" },
  body: JSON.stringify({ username: "client1", password: "client1" }),
});
const session = (await login.json()).access_token;
const client = new DynasealClient({ getKey: issuerKeySource({ issuerUrl: issuer, accessToken: session }),
                                    keyStore: new MemoryKeyStore() });
const result = {};
const messages = [{ role: "user", content: "count to three" }];

const openai = new OpenAI({ baseURL: gateway, apiKey: "dpop", fetch: client.fetch, maxRetries: 0 });
const plain = await openai.chat.completions.create({ model: "deepseek-chat", messages, max_tokens: 20 });
result.openai = { text: plain.choices[0].message.content, usage: plain.usage };
let streamed = "";
for await (const chunk of await openai.chat.completions.create({ model: "deepseek-chat", messages, stream: true,
                                                                 max_tokens: 20 })) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
}
result.openaiStream = streamed;

const vercel = createOpenAI({ baseURL: gateway, apiKey: "dpop", fetch: client.fetch });
const stream = streamText({ model: vercel.chat("deepseek-chat"), prompt: "count to three", maxOutputTokens: 20,
                            maxRetries: 0 });
let vercelText = "";
for await (const part of stream.textStream) vercelText += part;
result.vercel = vercelText;

const lifted = new OpenAI({ baseURL: gateway, apiKey: await client.key(), maxRetries: 0 });
try {
  await lifted.chat.completions.create({ model: "deepseek-chat", messages, max_tokens: 5 });
  result.lifted = "accepted";
} catch (error) {
  result.lifted = `${error.constructor.name} ${error.status} ${error.code}`;
}
process.stdout.write(JSON.stringify(result));
