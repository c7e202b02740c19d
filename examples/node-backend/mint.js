// A tenant backend in Node minting Dynaseal dynamic keys with `jose` (the same claims as the Python helper,
// dynaseal/keys/mint.py; their shape: contracts/dynamic-key.schema.json).
//
//   node mint.js keygen                 -> {private_jwk, public_jwk}: put public_jwk in the tenant's `keys`
//   node mint.js < job.json             -> {native, bound}: job = {private_jwk, tenant, models, max_tokens,
//                                          ttl, holder_jwk?, ...}; `bound` is bound to holder_jwk (cnf)
//
// In a web backend, call mintKey() from the route where a logged-in user asks for a key.
import { randomUUID } from "node:crypto";
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, SignJWT } from "jose";

/** A fresh Ed25519 signing key for a tenant (keep private_jwk secret; publish public_jwk). */
export async function generateTenantKey(kid = `node-${randomUUID().slice(0, 8)}`) {
  const { privateKey, publicKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  return {
    private_jwk: { ...(await exportJWK(privateKey)), kid, alg: "EdDSA" },
    public_jwk: { ...(await exportJWK(publicKey)), kid, alg: "EdDSA", use: "sig" },
  };
}

/**
 * The `cnf` claim that binds a key to a device's holder key: `jkt` (DPoP proofs required) or, with
 * `children: true`, the key itself (the device may then mint narrowed children for its sub-agents).
 */
export async function holderBinding(holderJwk, { children = false } = {}) {
  const { kty, crv, x, y } = holderJwk;
  const publicJwk = y === undefined ? { kty, crv, x } : { kty, crv, x, y };
  return children ? { jwk: publicJwk } : { jkt: await calculateJwkThumbprint(publicJwk, "sha256") };
}

/** Sign a native dynamic key (EdDSA) for `tenant`; every limit optional but `models`, `max_tokens`, `ttl`. */
export async function mintKey({ privateJwk, tenant, models, maxTokens, ttl, audience = "dynaseal", sub, budget,
                                uses, rpm, params, cb, eventId, cnf, origins, now }) {
  const issued = Math.floor(now ?? Date.now() / 1000);
  const claims = { iss: tenant, aud: audience, iat: issued, nbf: issued, exp: issued + ttl, jti: randomUUID(),
                   models, max_tokens: maxTokens };
  const optional = { sub, budget, uses, rpm, params, cb, event_id: eventId, cnf, origins };
  for (const [name, value] of Object.entries(optional)) if (value !== undefined) claims[name] = value;
  const key = await importJWK(privateJwk, "EdDSA");
  return new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid: privateJwk.kid, typ: "JWT" }).sign(key);
}

async function main() {
  if (process.argv[2] === "keygen") {
    process.stdout.write(JSON.stringify(await generateTenantKey(process.argv[3])));
    return;
  }
  let input = "";
  for await (const chunk of process.stdin) input += chunk;
  const job = JSON.parse(input);
  const common = { privateJwk: job.private_jwk, tenant: job.tenant, models: job.models, maxTokens: job.max_tokens,
                   ttl: job.ttl, sub: job.sub, uses: job.uses, origins: job.origins };
  const native = await mintKey(common);
  const bound = job.holder_jwk ? await mintKey({ ...common, cnf: await holderBinding(job.holder_jwk) }) : null;
  process.stdout.write(JSON.stringify({ native, bound }));
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
