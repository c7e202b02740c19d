// Reads {alg, private_jwk, parent, method, url, child} as JSON on stdin and prints what this package makes
// with that key: a DPoP proof for the request and a narrowed child of `parent` (tests/test_js_client.py
// sends both through the gateway's verifier).
import { mintChild } from "../src/child.js";
import { createProof } from "../src/dpop.js";
import { HolderKey } from "../src/holder.js";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
const holder = await HolderKey.fromPrivateJwk(job.private_jwk, job.alg);
const proof = await createProof(holder, { method: job.method, url: job.url, accessToken: job.parent });
let child = null;
let refused = null;
try {
  child = await mintChild(holder, job.parent, job.child);
} catch (error) {
  refused = `${error.name}: ${error.message}`;
}
process.stdout.write(JSON.stringify({ proof, child, refused }));
