// The Vercel AI SDK through the gateway, unchanged: the OpenAI provider (Responses by default) and the
// Anthropic provider (x-api-key), streamText. Keys and the gateway URL come from the pytest wrapper.
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createAnthropic } from "@ai-sdk/anthropic";

const root = process.env.DYNASEAL_GATEWAY;

async function streamed(model) {
  const result = streamText({ model, prompt: "Say something about keys.", maxOutputTokens: 32, maxRetries: 0 });
  let text = "";
  for await (const part of result.textStream) text += part;
  return { text, usage: await result.usage };
}

test("openai provider: streamText over the Responses API", async () => {
  const openai = createOpenAI({ baseURL: `${root}/v1`, apiKey: process.env.DYNASEAL_OPENAI_KEY });
  const { text, usage } = await streamed(openai("gpt-4o-mini"));
  assert.ok(text.length > 0);
  assert.ok(usage.inputTokens > 0 && usage.outputTokens > 0);
});

test("anthropic provider: streamText over the Messages API", async () => {
  const anthropic = createAnthropic({ baseURL: `${root}/v1`, apiKey: process.env.DYNASEAL_ANTHROPIC_KEY });
  const { text, usage } = await streamed(anthropic("claude-sonnet-4-5"));
  assert.ok(text.length > 0);
  assert.ok(usage.inputTokens > 0 && usage.outputTokens > 0);
});

test("refusals surface as API call errors with the gateway's status and code", async () => {
  const anthropic = createAnthropic({ baseURL: `${root}/v1`, apiKey: process.env.DYNASEAL_ANTHROPIC_KEY });
  await assert.rejects(
    generateText({ model: anthropic("claude-opus-4-1"), prompt: "hi", maxOutputTokens: 8, maxRetries: 0 }),
    (error) => error.statusCode === 403 && error.responseBody.includes("model_not_allowed"));
  const openai = createOpenAI({ baseURL: `${root}/v1`, apiKey: "not-a-key" });
  await assert.rejects(
    generateText({ model: openai("gpt-4o-mini"), prompt: "hi", maxRetries: 0 }),
    (error) => error.statusCode === 401 && error.responseBody.includes("invalid_api_key"));
});
