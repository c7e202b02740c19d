// Types of @dynaseal/client (the package is plain ES modules; no runtime dependencies).

export type HolderAlg = "ES256" | "EdDSA";

export interface KeyStore {
  get(name: string): Promise<{ keyPair: CryptoKeyPair; alg: HolderAlg; created: number } | undefined>;
  put(name: string, value: { keyPair: CryptoKeyPair; alg: HolderAlg; created: number }): Promise<unknown>;
  delete(name: string): Promise<unknown>;
}

export class HolderKey {
  readonly keyPair: CryptoKeyPair;
  readonly alg: HolderAlg;
  readonly publicJwk: Readonly<JsonWebKey>;
  constructor(keyPair: CryptoKeyPair, alg: HolderAlg, publicJwk: JsonWebKey);
  /** A fresh non-extractable pair; "auto" takes Ed25519 where the runtime has it, else P-256. */
  static generate(options?: { alg?: "auto" | HolderAlg }): Promise<HolderKey>;
  static fromKeyPair(keyPair: CryptoKeyPair, alg: HolderAlg): Promise<HolderKey>;
  static fromPrivateJwk(jwk: JsonWebKey, alg: HolderAlg): Promise<HolderKey>;
  thumbprint(): Promise<string>;
  signJws(header: Record<string, unknown>, payload: Record<string, unknown>): Promise<string>;
}

export class IndexedDbKeyStore implements KeyStore {
  constructor(options?: { database?: string; store?: string; indexedDB?: IDBFactory });
  get(name: string): Promise<{ keyPair: CryptoKeyPair; alg: HolderAlg; created: number } | undefined>;
  put(name: string, value: { keyPair: CryptoKeyPair; alg: HolderAlg; created: number }): Promise<unknown>;
  delete(name: string): Promise<unknown>;
}

export class MemoryKeyStore implements KeyStore {
  get(name: string): Promise<{ keyPair: CryptoKeyPair; alg: HolderAlg; created: number } | undefined>;
  put(name: string, value: { keyPair: CryptoKeyPair; alg: HolderAlg; created: number }): Promise<void>;
  delete(name: string): Promise<void>;
}

export function ed25519Supported(): Promise<boolean>;
export function loadOrCreateHolder(store: KeyStore, name?: string,
                                   options?: { alg?: "auto" | HolderAlg }): Promise<HolderKey>;

export function thumbprint(jwk: JsonWebKey): Promise<string>;
export function accessTokenHash(token: string): Promise<string>;
export function publicMembers(jwk: JsonWebKey): JsonWebKey;

export function proofUrl(url: string | URL): string;
export function createProof(holder: HolderKey, request: {
  method: string; url: string | URL; accessToken?: string; iat?: number; jti?: string;
}): Promise<string>;

export interface ChildLimits {
  models?: string[];
  max_tokens?: number;
  budget?: number;
  uses?: number;
  rpm?: number;
  params?: Record<string, { min?: number | null; max?: number | null } | string[]>;
  /** Seconds from now; never past the parent's expiry. */
  ttl?: number;
  cnf?: { jkt: string } | { jwk: JsonWebKey };
  jti?: string;
  now?: number;
}
export const CHILD_TYP: "dynaseal-child+jwt";
export function mintChild(holder: HolderKey, parent: string, limits?: ChildLimits): Promise<string>;
export function chainOf(token: string): Array<Record<string, unknown>>;

export interface BoundKey {
  token: string;
  expiresAt?: number;
}
export type GetKey = (holder: HolderKey) => Promise<BoundKey>;

export function issuerKeySource(options: {
  issuerUrl: string;
  accessToken: string | (() => string | Promise<string>);
  scope?: Record<string, unknown>;
  fetch?: typeof fetch;
}): GetKey;

export class DynasealClient {
  constructor(options: {
    getKey: GetKey;
    holder?: HolderKey;
    keyStore?: KeyStore;
    keyName?: string;
    alg?: "auto" | HolderAlg;
    refreshMarginSeconds?: number;
    fetch?: typeof fetch;
    now?: () => number;
  });
  /** Hand this to an SDK: `new OpenAI({ baseURL, apiKey: "dpop", fetch: client.fetch })`. */
  readonly fetch: typeof fetch;
  holderKey(): Promise<HolderKey>;
  key(): Promise<string>;
  refresh(): Promise<string>;
  authHeaders(method: string, url: string | URL): Promise<{ authorization: string; dpop: string }>;
  mintChild(limits?: ChildLimits): Promise<string>;
  postJson<T = unknown>(url: string | URL, body: unknown): Promise<T>;
}

export interface ErrorDetails {
  status?: number; code?: string | null; type?: string | null; param?: string | null;
  requestId?: string | null; retryAfter?: number | null;
}
export class DynasealError extends Error {
  constructor(message: string, details?: ErrorDetails);
  readonly status: number | null;
  readonly code: string | null;
  readonly type: string | null;
  readonly param: string | null;
  readonly requestId: string | null;
  readonly retryAfter: number | null;
  readonly retryable: boolean;
}
export class BadRequestError extends DynasealError {}
export class AuthenticationError extends DynasealError {}
export class InvalidKeyError extends AuthenticationError {}
export class ExpiredKeyError extends AuthenticationError {}
export class RevokedKeyError extends AuthenticationError {}
export class DpopProofError extends AuthenticationError {}
export class PermissionDeniedError extends DynasealError {}
export class ModelNotAllowedError extends PermissionDeniedError {}
export class ParamNotAllowedError extends PermissionDeniedError {}
export class OriginNotAllowedError extends PermissionDeniedError {}
export class RateLimitError extends DynasealError {}
export class KeyExhaustedError extends RateLimitError {}
export class QuotaExceededError extends RateLimitError {}
export class RequestTooLargeError extends DynasealError {}
export class GatewayUnavailableError extends DynasealError {}
export class ChildKeyError extends DynasealError {}
export class KeySourceError extends DynasealError {}
export function errorFor(status: number, headers: Headers, body: unknown): DynasealError;
export function raiseForStatus(response: Response): Promise<Response>;

export function encodeBytes(bytes: Uint8Array): string;
export function encodeJson(value: unknown): string;
export function decodeJson(text: string): any;
export function unverifiedClaims(token: string): Record<string, any>;
