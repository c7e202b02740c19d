// Narrowed child keys (dynaseal/keys/attenuation.py), minted offline by the holder of a key whose
// `cnf.jwk` names it: header {typ: "dynaseal-child+jwt", alg}, claims {iss, aud, iat, nbf, exp, jti, prn, ...}.
// The gateway refuses a child that asks for more than its parent; so does this client, before signing,
// so the page learns at once that the child it meant is not one the gateway would take.
import { encodeBytes, unverifiedClaims } from "./base64url.js";
import { ChildKeyError } from "./errors.js";
import { thumbprint } from "./jwk.js";

export const CHILD_TYP = "dynaseal-child+jwt";
const COUNTS = ["budget", "uses", "rpm"];

function refuse(message) {
  return new ChildKeyError(`child key ${message}`, { code: "child_key_widening" });
}

/** Every level of a (possibly child) key, root first, from its nested `prn` claims. */
export function chainOf(token) {
  const levels = [];
  let current = token;
  for (let depth = 0; current && depth < 8; depth += 1) {
    const claims = unverifiedClaims(current);
    levels.unshift(claims);
    current = typeof claims.prn === "string" ? claims.prn : null;
  }
  return levels;
}

function tightest(levels, name) {
  const values = levels.map((level) => level[name]).filter((value) => Number.isInteger(value));
  return values.length ? Math.min(...values) : null;
}

function positive(name, value) {
  if (!Number.isInteger(value) || value < 1) throw refuse(`claim '${name}' must be a positive integer`);
  return value;
}

function narrowParams(params, parentLimits) {
  for (const [name, spec] of Object.entries(params)) {
    if (name === "allow") {
      const parentAllow = parentLimits.allow;
      if (!Array.isArray(spec)) throw refuse("claim 'params.allow' must be a list");
      const wider = Array.isArray(parentAllow) ? spec.filter((p) => !parentAllow.includes(p)) : [];
      if (wider.length) throw refuse(`allows parameters its parent does not: ${wider.sort().join(", ")}`);
      continue;
    }
    const ceiling = parentLimits[name] || {};
    if (typeof ceiling.min === "number" && (spec.min === null || spec.min < ceiling.min)) {
      throw refuse(`allows ${name} below its parent's minimum ${ceiling.min}`);
    }
    if (typeof ceiling.max === "number" && (spec.max === null || spec.max > ceiling.max)) {
      throw refuse(`allows ${name} above its parent's maximum ${ceiling.max}`);
    }
  }
}

/**
 * Sign a child of `parent` that can do at most what the parent can; what it leaves out it inherits.
 * @param {import("./holder.js").HolderKey} holder the key named by the parent's `cnf.jwk`
 * @param {string} parent the parent's whole token (it travels in the child's `prn`)
 * @param {{models?: string[], max_tokens?: number, budget?: number, uses?: number, rpm?: number,
 *          params?: object, ttl?: number, cnf?: object, jti?: string, now?: number}} [limits]
 */
export async function mintChild(holder, parent, limits = {}) {
  const levels = chainOf(parent);
  const claims = levels[levels.length - 1];
  const holderJwk = claims.cnf && claims.cnf.jwk;
  if (!holderJwk) throw refuse("needs a parent that names its holder (cnf.jwk): this key cannot have children");
  if ((await thumbprint(holderJwk)) !== (await holder.thumbprint())) {
    throw refuse("must be signed by the parent's holder key, not this one");
  }
  for (const name of ["sub", "event_id", "cb", "iss", "aud"]) {
    if (name in limits) throw refuse(`may not set '${name}': it is its root key's`);
  }
  const now = Math.floor(limits.now ?? Date.now() / 1000);
  const exp = limits.ttl === undefined ? claims.exp : now + positive("ttl", limits.ttl);
  if (exp > claims.exp) throw refuse("would expire after its parent");
  const child = { iss: claims.iss, aud: claims.aud, iat: now, nbf: now, exp,
                  jti: limits.jti ?? encodeBytes(crypto.getRandomValues(new Uint8Array(16))), prn: parent };
  if (limits.models !== undefined) {
    const allowed = levels.map((level) => level.models).filter(Array.isArray);
    const wider = limits.models.filter((m) => !allowed.every((models) => models.includes(m)));
    if (wider.length) throw refuse(`asks for model ${JSON.stringify(wider[0])}, which its parent may not use`);
    child.models = [...limits.models];
  }
  if (limits.max_tokens !== undefined) {
    const ceiling = tightest(levels, "max_tokens");
    if (ceiling !== null && positive("max_tokens", limits.max_tokens) > ceiling) {
      throw refuse(`asks for max_tokens ${limits.max_tokens}, more than its parent's ${ceiling}`);
    }
    child.max_tokens = limits.max_tokens;
  }
  for (const name of COUNTS) {
    if (limits[name] === undefined) continue;
    const ceiling = tightest(levels, name);
    if (ceiling !== null && positive(name, limits[name]) > ceiling) {
      throw refuse(`asks for ${name} ${limits[name]}, more than its parent's ${ceiling}`);
    }
    child[name] = positive(name, limits[name]);
  }
  if (limits.params !== undefined) {
    for (const level of levels) narrowParams(limits.params, level.params || {});
    child.params = limits.params;
  }
  if (limits.cnf !== undefined) child.cnf = limits.cnf;
  return holder.signJws({ typ: CHILD_TYP }, child);
}
