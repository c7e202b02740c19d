// @dynaseal/client: device-bound dynamic keys for browsers, workers and Node (WebCrypto + fetch only).
export { decodeJson, encodeBytes, encodeJson, unverifiedClaims } from "./base64url.js";
export { CHILD_TYP, chainOf, mintChild } from "./child.js";
export { DynasealClient, issuerKeySource } from "./client.js";
export { createProof, proofUrl } from "./dpop.js";
export * from "./errors.js";
export { HolderKey, IndexedDbKeyStore, MemoryKeyStore, ed25519Supported, loadOrCreateHolder } from "./holder.js";
export { accessTokenHash, publicMembers, thumbprint } from "./jwk.js";
