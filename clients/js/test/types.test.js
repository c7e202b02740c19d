// The hand-written declarations name every export of the package, and nothing it does not export.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as api from "../src/index.js";

test("index.d.ts declares exactly the runtime exports", () => {
  const declarations = readFileSync(new URL("../src/index.d.ts", import.meta.url), "utf8");
  const declared = new Set([...declarations.matchAll(/^export (?:class|function|const) (\w+)/gm)].map((m) => m[1]));
  assert.deepEqual([...declared].sort(), Object.keys(api).sort());
});
