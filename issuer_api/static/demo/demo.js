// The demo page: log in, a device-bound key, a streamed completion, its callback, a child key, a lifted key.
import { DynasealClient, issuerKeySource, raiseForStatus, unverifiedClaims } from "/demo/client/index.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const show = (id, text, state) => {
  const element = $(id);
  element.textContent = text;
  if (state) element.dataset.state = state;
  element.classList.toggle("refused", state === "refused");
  element.classList.toggle("ok", state === "ok");
};
const status = (text) => show("status", text);
const describe = (error) => (error.code ? `${error.name}: ${error.status} ${error.code}` : `${error.name}: ${error.message}`);

let session = null;
let client = null;
let gateway = null;

async function login() {
  const config = await (await fetch("/demo/config.json")).json();
  gateway = config.gateway;
  show("gateway", gateway);
  const reply = await fetch("/user/login", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: document.getElementById("username").value,
                           password: document.getElementById("password").value }),
  });
  if (!reply.ok) throw new Error(`login refused (${reply.status})`);
  session = (await reply.json()).access_token;
  client = new DynasealClient({
    getKey: issuerKeySource({ issuerUrl: location.origin, accessToken: () => session }),
    keyName: "demo",
  });
  const holder = await client.holderKey();
  show("holder", `${holder.alg}, thumbprint ${await holder.thumbprint()}, ` +
                 `private key extractable: ${holder.keyPair.privateKey.extractable}`, "ok");
  const claims = unverifiedClaims(await client.key());
  show("key", `jti ${claims.jti}, bound to ${claims.cnf.jwk ? "cnf.jwk" : "cnf.jkt"}, ` +
              `models ${claims.models.join(", ")}, expires ${new Date(claims.exp * 1000).toISOString()}`, "ok");
  for (const id of ["stream", "child", "lifted"]) document.getElementById(id).disabled = false;
  status("logged in");
}

async function waitForCallback(requestId) {
  for (let attempt = 0; attempt < 120; attempt += 1) {
    const reply = await fetch("/usage?limit=20", { headers: { authorization: `Bearer ${session}` } });
    if (reply.ok) {
      const item = (await reply.json()).items.find((i) => i.webhook_id === requestId);
      if (item) return item;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error("no callback yet");
}

async function stream() {
  show("output", "");
  show("usage", "waiting for the callback…");
  show("cost", "…");
  const response = await client.fetch(`${gateway}/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "deepseek-chat", stream: true, max_tokens: 64,
                           messages: [{ role: "user", content: document.getElementById("prompt").value }] }),
  });
  await raiseForStatus(response);
  const requestId = response.headers.get("x-dynaseal-request-id");
  show("request-id", requestId, "ok");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: ?/, "");
      if (data === "[DONE]") continue;
      const delta = JSON.parse(data).choices?.[0]?.delta?.content;
      if (delta) {
        text += delta;
        show("output", text, "streaming");
      }
    }
  }
  show("output", text, "ok");
  status("streamed; waiting for the signed usage callback");
  const item = await waitForCallback(requestId);
  const usage = item.usage ?? {};
  show("usage", `${item.tokens} tokens (prompt ${usage.prompt_tokens}, completion ${usage.completion_tokens})`, "ok");
  show("cost", item.cost ? `${item.cost.amount} ${item.cost.currency}` : "unpriced", "ok");
  status("callback received");
}

async function subAgent(childKey) {
  // The sub-agent gets only the child key (no holder key): one request, at most 32 tokens.
  const response = await fetch(`${gateway}/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${childKey}` },
    body: JSON.stringify({ model: "deepseek-chat", max_tokens: 16, messages: [{ role: "user", content: "hi" }] }),
  });
  await raiseForStatus(response);
  const body = await response.json();
  return `${response.status}: ${body.choices[0].message.content}`;
}

async function child() {
  const childKey = await client.mintChild({ uses: 1, max_tokens: 32, models: ["deepseek-chat"] });
  try {
    show("child-first", await subAgent(childKey), "ok");
  } catch (error) {
    show("child-first", describe(error), "refused");
  }
  try {
    show("child-second", await subAgent(childKey), "ok");
  } catch (error) {
    show("child-second", describe(error), "refused");
  }
}

async function lifted() {
  const key = await client.key();
  show("curl", `curl ${gateway}/chat/completions -H 'authorization: Bearer ${key}' ` +
               `-H 'content-type: application/json' -d '{"model": "deepseek-chat", "messages": [...]}'`);
  // What curl would send: the key alone, no proof from the non-extractable key.
  const response = await fetch(`${gateway}/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: "deepseek-chat", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });
  try {
    await raiseForStatus(response);
    show("lifted-result", `accepted (${response.status})`, "ok");
  } catch (error) {
    show("lifted-result", describe(error), "refused");
  }
}

function wire(id, action) {
  document.getElementById(id).addEventListener("click", async () => {
    status(`${id}…`);
    try {
      await action();
      if ($("status").textContent === `${id}…`) status(`${id}: done`);
    } catch (error) {
      status(`${id} failed: ${describe(error)}`);
      if (id === "stream") show("output", `refused: ${describe(error)}`, "refused");
    }
  });
}

wire("login", login);
wire("stream", stream);
wire("child", child);
wire("lifted", lifted);
