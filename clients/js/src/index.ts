import type { AccessToken, GetTokenOptions, TokenCredential } from "@azure/core-auth";

/** Options of {@link BrokerCredential}. Give `apiKey`, or `credential` and `audience`. */
export interface BrokerCredentialOptions {
  /** The broker's base URL, e.g. `https://broker.example.net` (the client adds `/api/tokens/...`). */
  baseUrl: string;
  /** An API key from `handler keys new` (sent as `Authorization: Bearer <key>`). */
  apiKey?: string;
  /** Or an Entra ID credential for the broker itself (`TOKEN_API_AUTH=entra`), e.g. a managed identity. */
  credential?: TokenCredential;
  /** With `credential`: the broker's `TOKEN_API_AUDIENCE` (e.g. `api://<app id>`); `{audience}/.default` is asked for. */
  audience?: string;
  /** Ask for this user's token (`?user_id=`) instead of the agent's. */
  userId?: string;
  /** Seconds a token must still be valid, both at the broker (`min_validity`) and in this cache. Default 300. */
  minValiditySeconds?: number;
  /** Timeout of one request to the broker, in milliseconds. Default 10000. */
  timeoutMs?: number;
  /** Retries of a `503`/`429` answer with `Retry-After`. Default 3. */
  maxRetries?: number;
  /** Total time spent waiting for `Retry-After`, in milliseconds. Default 30000. */
  maxRetryWaitMs?: number;
}

/** The broker refused, could not be reached, or stayed unavailable after the retries. */
export class BrokerAuthenticationError extends Error {
  /** The broker's HTTP status; undefined when no answer came (network error, timeout). */
  readonly statusCode: number | undefined;
  /** The broker's stable error title (its JSON `error`), when it sent one. */
  readonly title: string | undefined;
  /** The broker's `x-request-id`, to find the request in its logs. */
  readonly requestId: string | undefined;

  constructor(
    message: string,
    init: { statusCode?: number; title?: string; requestId?: string; cause?: unknown } = {},
  ) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "BrokerAuthenticationError";
    this.statusCode = init.statusCode;
    this.title = init.title;
    this.requestId = init.requestId;
  }
}

interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: "abort", listener: () => void): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function abortError(signal: AbortSignalLike): unknown {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

/** The caller's signal ends its own wait, never the request it may share with other callers. */
function withAbort<T>(promise: Promise<T>, signal: AbortSignalLike | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortError(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener("abort", onAbort);
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Seconds (or an HTTP date) to milliseconds; undefined when absent or malformed. */
function retryAfterMs(value: string | null): number | undefined {
  if (value === null) return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/**
 * A `TokenCredential` that asks the token broker (`GET /api/tokens/{scope}`) over HTTP.
 * Tokens are cached per scope string and user until they are within `minValiditySeconds`
 * of expiry; concurrent calls for the same token share one request. Never logs.
 */
export class BrokerCredential implements TokenCredential {
  readonly #base: string;
  readonly #apiKey: string | undefined;
  readonly #credential: TokenCredential | undefined;
  readonly #brokerScope: string | undefined;
  readonly #userId: string | undefined;
  readonly #minValidityMs: number;
  readonly #timeoutMs: number;
  readonly #maxRetries: number;
  readonly #maxRetryWaitMs: number;
  readonly #cache = new Map<string, AccessToken>();
  readonly #inflight = new Map<string, Promise<AccessToken>>();

  constructor(options: BrokerCredentialOptions) {
    if (!options?.baseUrl) throw new TypeError("BrokerCredential: baseUrl is required");
    if (!options.apiKey === !options.credential) {
      throw new TypeError("BrokerCredential: give either apiKey or credential (with audience)");
    }
    if (options.credential && !options.audience) {
      throw new TypeError("BrokerCredential: audience is required with credential");
    }
    const minValidity = options.minValiditySeconds ?? 300;
    if (!Number.isInteger(minValidity) || minValidity < 0 || minValidity > 86400) {
      throw new RangeError("BrokerCredential: minValiditySeconds must be an integer in 0..86400");
    }
    this.#base = options.baseUrl.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
    this.#credential = options.credential;
    const audience = options.audience?.replace(/\/+$/, "");
    this.#brokerScope = audience?.endsWith("/.default") ? audience : audience && `${audience}/.default`;
    this.#userId = options.userId;
    this.#minValidityMs = minValidity * 1000;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#maxRetries = options.maxRetries ?? 3;
    this.#maxRetryWaitMs = options.maxRetryWaitMs ?? 30_000;
  }

  async getToken(scopes: string | string[], options?: GetTokenOptions): Promise<AccessToken | null> {
    const scope = (Array.isArray(scopes) ? scopes : [scopes]).join(" ");
    const key = `${this.#userId ?? ""}\n${scope}`;
    const cached = this.#cache.get(key);
    if (cached && cached.expiresOnTimestamp - Date.now() > this.#minValidityMs) return { ...cached };
    let pending = this.#inflight.get(key);
    if (!pending) {
      pending = this.#fetchToken(scope)
        .then((token) => {
          this.#cache.set(key, token);
          return token;
        })
        .finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, pending);
    }
    const token = await withAbort(pending, options?.abortSignal as AbortSignalLike | undefined);
    return { ...token };
  }

  async #bearer(): Promise<string> {
    if (this.#apiKey) return this.#apiKey;
    const token = await this.#credential!.getToken(this.#brokerScope!);
    if (!token) {
      throw new BrokerAuthenticationError(`The credential for the broker returned no token for ${this.#brokerScope}`);
    }
    return token.token;
  }

  async #fetchToken(scope: string): Promise<AccessToken> {
    const query = new URLSearchParams();
    if (this.#userId !== undefined) query.set("user_id", this.#userId);
    query.set("min_validity", String(this.#minValidityMs / 1000));
    const url = `${this.#base}/api/tokens/${encodeURIComponent(scope)}?${query}`;
    let waitedMs = 0;
    for (let retries = 0; ; retries++) {
      const bearer = await this.#bearer();
      let response: Response;
      try {
        response = await fetch(url, {
          headers: { authorization: `Bearer ${bearer}`, accept: "application/json" },
          redirect: "error",
          signal: AbortSignal.timeout(this.#timeoutMs),
        });
      } catch (cause) {
        const timedOut = (cause as Error)?.name === "TimeoutError";
        throw new BrokerAuthenticationError(
          timedOut
            ? `The token broker did not answer within ${this.#timeoutMs} ms`
            : `The token broker could not be reached: ${(cause as Error)?.message ?? cause}`,
          { cause },
        );
      }
      const requestId = response.headers.get("x-request-id") ?? undefined;
      let body: Record<string, unknown> = {};
      try {
        body = (await response.json()) as Record<string, unknown>;
      } catch (cause) {
        if ((cause as Error)?.name === "TimeoutError") {
          throw new BrokerAuthenticationError(`The token broker did not answer within ${this.#timeoutMs} ms`, {
            statusCode: response.status,
            requestId,
            cause,
          });
        }
      }
      if (response.status === 200) {
        if (typeof body.token !== "string" || typeof body.expires_on !== "number") {
          throw new BrokerAuthenticationError("The token broker's answer has no token or expires_on", {
            statusCode: 200,
            requestId,
          });
        }
        return { token: body.token, expiresOnTimestamp: body.expires_on * 1000 };
      }
      const message = typeof body.message === "string" ? body.message : `The token broker answered ${response.status}`;
      const title = typeof body.error === "string" ? body.error : undefined;
      const init = { statusCode: response.status, title, requestId };
      if (response.status === 503 || response.status === 429) {
        const delay = retryAfterMs(response.headers.get("retry-after"));
        if (delay === undefined) throw new BrokerAuthenticationError(message, init);
        if (retries >= this.#maxRetries || waitedMs + delay > this.#maxRetryWaitMs) {
          throw new BrokerAuthenticationError(`${message} (gave up after ${retries} retries)`, init);
        }
        waitedMs += delay;
        await sleep(delay);
        continue;
      }
      throw new BrokerAuthenticationError(message, init);
    }
  }
}
