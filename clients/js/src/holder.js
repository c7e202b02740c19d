// The device's holder key: a WebCrypto key pair whose private half cannot be exported (extractable: false),
// kept in IndexedDB between visits. A script on the page can ask it to sign, never read it.
import { encodeBytes, encodeJson, utf8 } from "./base64url.js";
import { publicMembers, thumbprint } from "./jwk.js";

const PARAMS = {
  ES256: { generate: { name: "ECDSA", namedCurve: "P-256" }, sign: { name: "ECDSA", hash: "SHA-256" } },
  EdDSA: { generate: { name: "Ed25519" }, sign: { name: "Ed25519" } },
};

/** Whether this runtime makes non-extractable Ed25519 keys (recent browsers, Node ≥ 20). */
export async function ed25519Supported() {
  try {
    await crypto.subtle.generateKey(PARAMS.EdDSA.generate, false, ["sign", "verify"]);
    return true;
  } catch {
    return false;
  }
}

export class HolderKey {
  /**
   * @param {CryptoKeyPair} keyPair a pair whose privateKey is not extractable
   * @param {"ES256"|"EdDSA"} alg
   * @param {JsonWebKey} publicJwk
   */
  constructor(keyPair, alg, publicJwk) {
    if (!PARAMS[alg]) throw new TypeError(`a holder key is ES256 or EdDSA, not ${alg}`);
    if (keyPair.privateKey.extractable) throw new TypeError("a holder's private key must not be extractable");
    this.keyPair = keyPair;
    this.alg = alg;
    this.publicJwk = Object.freeze(publicMembers(publicJwk));
  }

  /**
   * A fresh key pair. `alg: "auto"` (the default) takes Ed25519 where the runtime has it, else P-256.
   * @param {{alg?: "auto"|"ES256"|"EdDSA"}} [options]
   */
  static async generate({ alg = "auto" } = {}) {
    const chosen = alg === "auto" ? ((await ed25519Supported()) ? "EdDSA" : "ES256") : alg;
    if (!PARAMS[chosen]) throw new TypeError(`unsupported holder algorithm ${alg}`);
    const keyPair = await crypto.subtle.generateKey(PARAMS[chosen].generate, false, ["sign", "verify"]);
    return HolderKey.fromKeyPair(keyPair, chosen);
  }

  /** Wrap a stored pair (its public half is always exportable; the private half must not be). */
  static async fromKeyPair(keyPair, alg) {
    const publicJwk = await crypto.subtle.exportKey("jwk", keyPair.publicKey);
    return new HolderKey(keyPair, alg, publicJwk);
  }

  /**
   * Import a private JWK as a non-extractable key: for tests, and for apps that received their key
   * another way. The JWK object itself stays with the caller.
   */
  static async fromPrivateJwk(jwk, alg) {
    const params = PARAMS[alg];
    if (!params) throw new TypeError(`unsupported holder algorithm ${alg}`);
    const privateKey = await crypto.subtle.importKey("jwk", jwk, params.generate, false, ["sign"]);
    const publicJwk = publicMembers(jwk);
    const publicKey = await crypto.subtle.importKey("jwk", publicJwk, params.generate, true, ["verify"]);
    return new HolderKey({ privateKey, publicKey }, alg, publicJwk);
  }

  /** RFC 7638 thumbprint of the public key: the `cnf.jkt` of keys bound to this holder. */
  thumbprint() {
    return thumbprint(this.publicJwk);
  }

  /** Sign `header.payload` as a compact JWS with this key (the signature in JWS form: r‖s for ES256). */
  async signJws(header, payload) {
    const input = `${encodeJson({ ...header, alg: this.alg })}.${encodeJson(payload)}`;
    const signature = await crypto.subtle.sign(PARAMS[this.alg].sign, this.keyPair.privateKey, utf8(input));
    return `${input}.${encodeBytes(new Uint8Array(signature))}`;
  }
}

/** Holder keys in IndexedDB: the CryptoKey objects themselves (structured clone keeps them unexportable). */
export class IndexedDbKeyStore {
  constructor({ database = "dynaseal", store = "holder-keys", indexedDB = globalThis.indexedDB } = {}) {
    if (!indexedDB) throw new TypeError("IndexedDB is not available here: pass a MemoryKeyStore");
    this.database = database;
    this.store = store;
    this.indexedDB = indexedDB;
  }

  _open() {
    return new Promise((resolve, reject) => {
      const request = this.indexedDB.open(this.database, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(this.store);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }

  async _run(mode, action) {
    const db = await this._open();
    try {
      return await new Promise((resolve, reject) => {
        const request = action(db.transaction(this.store, mode).objectStore(this.store));
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
    } finally {
      db.close();
    }
  }

  get(name) {
    return this._run("readonly", (store) => store.get(name));
  }

  put(name, value) {
    return this._run("readwrite", (store) => store.put(value, name));
  }

  delete(name) {
    return this._run("readwrite", (store) => store.delete(name));
  }
}

/** Holder keys for this process only (Node, tests, workers without IndexedDB). */
export class MemoryKeyStore {
  constructor() {
    this.values = new Map();
  }

  async get(name) {
    return this.values.get(name);
  }

  async put(name, value) {
    this.values.set(name, value);
  }

  async delete(name) {
    this.values.delete(name);
  }
}

/** The key stored under `name`, or a new one (generated and stored) when there is none. */
export async function loadOrCreateHolder(store, name = "default", options = {}) {
  const stored = await store.get(name);
  if (stored && stored.keyPair && stored.alg) return HolderKey.fromKeyPair(stored.keyPair, stored.alg);
  const holder = await HolderKey.generate(options);
  await store.put(name, { keyPair: holder.keyPair, alg: holder.alg, created: Date.now() });
  return holder;
}
