// A device-bound dynamic key, kept fresh, and a `fetch` that sends it with a new DPoP proof each time.
// Plugs into SDKs that take a fetch: `new OpenAI({ baseURL, apiKey: "dpop", fetch: client.fetch })`,
// `new Anthropic({ baseURL, apiKey: "dpop", fetch: client.fetch })`, `createOpenAI({ baseURL, fetch })`.
import { unverifiedClaims } from "./base64url.js";
import { mintChild } from "./child.js";
import { createProof } from "./dpop.js";
import { KeySourceError, raiseForStatus } from "./errors.js";
import { IndexedDbKeyStore, MemoryKeyStore, loadOrCreateHolder } from "./holder.js";

// Credentials an SDK sets on its own (its apiKey): the gateway gets the bound key instead.
const CREDENTIAL_HEADERS = ["authorization", "x-api-key", "dynasealtoken", "dpop"];

/**
 * A key source that asks the issuer API (or any backend with its contract) for a key bound to the holder:
 * `POST {issuerUrl}/key/create` with the user's session token and `holder_jwk` (so the page may also mint
 * narrowed children for its sub-agents).
 * @param {{issuerUrl: string, accessToken: string|(() => string|Promise<string>), scope?: object,
 *          fetch?: typeof fetch}} options
 */
export function issuerKeySource({ issuerUrl, accessToken, scope = {}, fetch: fetchImpl }) {
  return async (holder) => {
    const token = typeof accessToken === "function" ? await accessToken() : accessToken;
    const doFetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
    let response;
    try {
      response = await doFetch(`${issuerUrl.replace(/\/$/, "")}/key/create`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ ...scope, holder_jwk: holder.publicJwk }),
      });
    } catch (cause) {
      throw new KeySourceError(`the backend could not be reached: ${cause}`);
    }
    if (!response.ok) {
      let message = `the backend refused a key (${response.status})`;
      try {
        const body = await response.json();
        if (body && body.error && body.error.message) message = `${message}: ${body.error.message}`;
      } catch {
        // not JSON: the status says enough
      }
      throw new KeySourceError(message, { status: response.status });
    }
    const body = await response.json();
    return { token: body.token, expiresAt: body.expires_at };
  };
}

function replayable(body) {
  return body === undefined || body === null || typeof body === "string" || body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) || body instanceof URLSearchParams;
}

export class DynasealClient {
  /**
   * @param {{getKey: (holder: import("./holder.js").HolderKey) => Promise<{token: string, expiresAt?: number}>,
   *          holder?: import("./holder.js").HolderKey, keyStore?: object, keyName?: string,
   *          alg?: "auto"|"ES256"|"EdDSA", refreshMarginSeconds?: number, fetch?: typeof fetch,
   *          now?: () => number}} options
   */
  constructor(options) {
    if (typeof options?.getKey !== "function") throw new TypeError("DynasealClient needs getKey(holder)");
    this.getKey = options.getKey;
    this.holder = options.holder ?? null;
    this.keyStore = options.keyStore ??
      (globalThis.indexedDB ? new IndexedDbKeyStore() : new MemoryKeyStore());
    this.keyName = options.keyName ?? "default";
    this.alg = options.alg ?? "auto";
    this.refreshMarginSeconds = options.refreshMarginSeconds ?? 60;
    this.baseFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.now = options.now ?? (() => Date.now() / 1000);
    this.current = null;
    this.pending = null;
    // Bound, so it can be handed to an SDK as is.
    this.fetch = this.fetch.bind(this);
  }

  /** The device's holder key: loaded from the key store, or made (non-extractable) and stored. */
  async holderKey() {
    if (!this.holder) this.holder = await loadOrCreateHolder(this.keyStore, this.keyName, { alg: this.alg });
    return this.holder;
  }

  /** The bound key in force, asking the backend for a new one when none is left or it expires soon. */
  async key() {
    const margin = this.current ? Math.min(this.refreshMarginSeconds, (this.current.exp - this.current.iat) / 2) : 0;
    if (this.current && this.now() < this.current.exp - margin) return this.current.token;
    return this.refresh();
  }

  /** Ask the backend for a new bound key now (concurrent callers share one request). */
  async refresh() {
    if (!this.pending) {
      this.pending = (async () => {
        const holder = await this.holderKey();
        const { token } = await this.getKey(holder);
        const claims = unverifiedClaims(token);
        this.current = { token, exp: Number(claims.exp), iat: Number(claims.iat ?? this.now()), claims };
        return token;
      })().finally(() => {
        this.pending = null;
      });
    }
    return this.pending;
  }

  /** `Authorization: DPoP <key>` and a fresh `DPoP` proof for one request. */
  async authHeaders(method, url) {
    const token = await this.key();
    const proof = await createProof(await this.holderKey(), { method, url, accessToken: token });
    return { authorization: `DPoP ${token}`, dpop: proof };
  }

  /**
   * fetch with the bound key: whatever credential the caller set is replaced. The response is returned
   * as the gateway gave it (SDKs read their own errors); `raiseForStatus` turns it into a typed error.
   * An `expired_key` answer gets one new key and one retry when the body can be sent again.
   */
  async fetch(input, init = {}) {
    const request = typeof Request !== "undefined" && input instanceof Request ? input : null;
    const url = request ? request.url : String(input);
    const method = (init.method ?? request?.method ?? "GET").toUpperCase();
    const send = async () => {
      const headers = new Headers(init.headers ?? request?.headers ?? {});
      for (const name of CREDENTIAL_HEADERS) headers.delete(name);
      for (const [name, value] of Object.entries(await this.authHeaders(method, url))) headers.set(name, value);
      return this.baseFetch(request ? new Request(request, { ...init, headers }) : url,
                            { ...init, method, headers });
    };
    const response = await send();
    if (response.status === 401 && !request && replayable(init.body)) {
      const code = await response.clone().json().then((b) => b?.error?.code, () => null);
      if (code === "expired_key") {
        await this.refresh();
        return send();
      }
    }
    return response;
  }

  /** Mint a narrowed child of the current key for a sub-agent (refused here when it would widen). */
  async mintChild(limits = {}) {
    return mintChild(await this.holderKey(), await this.key(), limits);
  }

  /** POST a JSON body and return the parsed answer, or throw the gateway's refusal as a typed error. */
  async postJson(url, body) {
    const response = await this.fetch(url, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    await raiseForStatus(response);
    return response.json();
  }
}
