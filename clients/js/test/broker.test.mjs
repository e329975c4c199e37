// BrokerCredential against the real broker binary (`handler dev`).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { inspect } from "node:util";

import {
  bearerTokenAuthenticationPolicy,
  createDefaultHttpClient,
  createEmptyPipeline,
  createPipelineRequest,
} from "@azure/core-rest-pipeline";

import { BrokerAuthenticationError, BrokerCredential } from "../dist/index.js";
import { askBroker, newKey, selfSignedCert, startBroker, startProxy, startRecorder } from "./harness.mjs";

const GRAPH = "https://graph.microsoft.com/.default";
const NARROW = "api://narrow-only/.default";
const T = { timeout: 30_000 };

describe("BrokerCredential with the real broker", { timeout: 180_000 }, () => {
  let broker;
  let admin;
  let narrow;
  const cleanups = [];
  const proxy = async (intercept) => {
    const p = await startProxy(broker.url, intercept);
    cleanups.push(p.close);
    return p;
  };

  before(async () => {
    admin = await newKey(["--name", "js-admin", "--scope", "*", "--user", "*", "--admin"]);
    narrow = await newKey(["--name", "js-narrow", "--scope", NARROW]);
    broker = await startBroker([admin.entry, narrow.entry]);
  });

  after(async () => {
    await Promise.all(cleanups.map((close) => close()));
    await broker?.stop();
  });

  it("returns the broker's token and expiry (expires_on * 1000)", T, async () => {
    const p = await proxy();
    const credential = new BrokerCredential({ baseUrl: p.url, apiKey: admin.key });
    const token = await credential.getToken(GRAPH);
    const direct = await askBroker(broker.url, GRAPH, admin.key, "?min_validity=300");
    assert.equal(direct.status, 200);
    assert.equal(token.token, direct.body.token);
    assert.equal(token.expiresOnTimestamp, direct.body.expires_on * 1000);
    assert.ok(token.expiresOnTimestamp > Date.now() + 300_000);
    assert.deepEqual(p.requests, [
      {
        method: "GET",
        url: `/api/tokens/${encodeURIComponent(GRAPH)}?min_validity=300`,
        authorization: `Bearer ${admin.key}`,
      },
    ]);
  });

  it("serves a second call within validity from its cache, and shares concurrent calls", T, async () => {
    const p = await proxy();
    const credential = new BrokerCredential({ baseUrl: p.url, apiKey: admin.key });
    const [a, b, c] = await Promise.all([
      credential.getToken(GRAPH),
      credential.getToken([GRAPH]),
      credential.getToken(GRAPH),
    ]);
    assert.equal(p.requests.length, 1, "concurrent calls for one scope make one request");
    assert.equal(a.token, b.token);
    assert.equal(a.token, c.token);
    const again = await credential.getToken(GRAPH);
    assert.equal(again.token, a.token);
    assert.equal(p.requests.length, 1, "a second call within validity makes no request");

    const other = await credential.getToken(["https://graph.microsoft.com/User.Read", "https://graph.microsoft.com/Mail.Read"]);
    assert.equal(p.requests.length, 2, "another scope string is another cache entry");
    assert.equal(
      p.requests[1].url,
      "/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2FUser.Read%20https%3A%2F%2Fgraph.microsoft.com%2FMail.Read?min_validity=300",
    );
    assert.notEqual(other.token, a.token);
  });

  it("asks again once the cached token is within the minimum validity", T, async () => {
    // A token with 200 s left: inside the default 300 s, outside a 100 s minimum.
    const p = await proxy(() => ({
      status: 200,
      body: { token: "short-lived", expires_on: Math.floor(Date.now() / 1000) + 200, scope: GRAPH, refresh_count: 0 },
    }));
    const strict = new BrokerCredential({ baseUrl: p.url, apiKey: admin.key });
    await strict.getToken(GRAPH);
    await strict.getToken(GRAPH);
    assert.equal(p.requests.length, 2);
    const lenient = new BrokerCredential({ baseUrl: p.url, apiKey: admin.key, minValiditySeconds: 100 });
    await lenient.getToken(GRAPH);
    await lenient.getToken(GRAPH);
    assert.equal(p.requests.length, 3);
    assert.match(p.requests[2].url, /\?min_validity=100$/);
  });

  const refusals = [
    ["401 for a wrong key", () => ({ apiKey: "tbk_not-a-key" }), GRAPH, 401],
    ["403 for a key whose scopes exclude the scope", () => ({ apiKey: narrow.key }), GRAPH, 403],
    ["404 for a user with no stored token", () => ({ apiKey: admin.key, userId: "nobody@example.com" }), GRAPH, 404],
  ];
  for (const [name, options, scope, status] of refusals) {
    it(`throws BrokerAuthenticationError: ${name}`, T, async () => {
      const opts = options();
      const query = opts.userId ? `?user_id=${encodeURIComponent(opts.userId)}&min_validity=300` : "?min_validity=300";
      const direct = await askBroker(broker.url, scope, opts.apiKey, query);
      assert.equal(direct.status, status);
      const credential = new BrokerCredential({ baseUrl: broker.url, ...opts });
      const err = await credential.getToken(scope).then(
        () => assert.fail("expected a refusal"),
        (e) => e,
      );
      assert.ok(err instanceof BrokerAuthenticationError);
      assert.ok(err instanceof Error);
      assert.equal(err.name, "BrokerAuthenticationError");
      assert.equal(err.statusCode, status);
      assert.equal(err.message, direct.body.message);
      assert.equal(err.title, direct.body.error);
      assert.ok(err.requestId);
      assert.ok(!inspect(err).includes(opts.apiKey), "the key is not in the error");
    });
  }

  it("retries a 503 after Retry-After, then succeeds", T, async () => {
    const p = await proxy((n) =>
      n === 1 ? { status: 503, headers: { "retry-after": "1" }, body: { error: "Unavailable", message: "try later" } } : undefined,
    );
    const credential = new BrokerCredential({ baseUrl: p.url, apiKey: admin.key });
    const started = Date.now();
    const token = await credential.getToken(GRAPH);
    const elapsed = Date.now() - started;
    assert.equal(p.requests.length, 2);
    assert.ok(elapsed >= 950, `waited ${elapsed} ms`);
    const direct = await askBroker(broker.url, GRAPH, admin.key);
    assert.equal(token.token, direct.body.token);
  });

  it("gives up after the retries or when Retry-After exceeds the budget", T, async () => {
    const busy = await proxy(() => ({ status: 429, headers: { "retry-after": "0" }, body: { error: "Too many", message: "slow down" } }));
    const credential = new BrokerCredential({ baseUrl: busy.url, apiKey: admin.key });
    await assert.rejects(credential.getToken(GRAPH), (err) => {
      assert.ok(err instanceof BrokerAuthenticationError);
      assert.equal(err.statusCode, 429);
      assert.match(err.message, /^slow down \(gave up after 3 retries\)$/);
      return true;
    });
    assert.equal(busy.requests.length, 4, "one request and three retries");

    const down = await proxy(() => ({ status: 503, headers: { "retry-after": "31" }, body: { error: "Unavailable", message: "down" } }));
    const started = Date.now();
    await assert.rejects(new BrokerCredential({ baseUrl: down.url, apiKey: admin.key }).getToken(GRAPH), (err) => err.statusCode === 503);
    assert.equal(down.requests.length, 1);
    assert.ok(Date.now() - started < 5_000, "a wait over the budget is not started");
  });

  it("times out a broker that does not answer", T, async () => {
    const silent = await proxy(() => "hang");
    const credential = new BrokerCredential({ baseUrl: silent.url, apiKey: admin.key, timeoutMs: 300 });
    await assert.rejects(credential.getToken(GRAPH), (err) => {
      assert.ok(err instanceof BrokerAuthenticationError);
      assert.equal(err.statusCode, undefined);
      assert.match(err.message, /did not answer within 300 ms/);
      return true;
    });
    const aborted = new AbortController();
    const pending = new BrokerCredential({ baseUrl: silent.url, apiKey: admin.key }).getToken(GRAPH, { abortSignal: aborted.signal });
    aborted.abort();
    await assert.rejects(pending, (err) => err.name === "AbortError");
  });

  it("asks an Entra credential for {audience}/.default and sends that bearer", T, async () => {
    const p = await proxy();
    const asked = [];
    const entra = {
      async getToken(scopes) {
        asked.push(scopes);
        // The dev broker takes keys; the bearer is what the credential returns.
        return { token: admin.key, expiresOnTimestamp: Date.now() + 3_600_000 };
      },
    };
    const credential = new BrokerCredential({ baseUrl: `${p.url}/`, credential: entra, audience: "api://token-broker" });
    const token = await credential.getToken(GRAPH);
    assert.deepEqual(asked, ["api://token-broker/.default"]);
    assert.equal(p.requests[0].authorization, `Bearer ${admin.key}`);
    assert.equal(typeof token.token, "string");
    assert.throws(() => new BrokerCredential({ baseUrl: p.url, credential: entra }), TypeError);
    assert.throws(() => new BrokerCredential({ baseUrl: p.url }), TypeError);
  });

  it("keeps the key and tokens out of inspect()", T, async () => {
    const credential = new BrokerCredential({ baseUrl: broker.url, apiKey: admin.key });
    const token = await credential.getToken(GRAPH);
    const shown = inspect(credential, { depth: 10, showHidden: true });
    assert.ok(!shown.includes(admin.key));
    assert.ok(!shown.includes(token.token));
  });

  it("authorizes requests in a core-rest-pipeline with bearerTokenAuthenticationPolicy", T, async () => {
    const tls = await selfSignedCert();
    const recorder = await startRecorder(tls);
    cleanups.push(recorder.close);
    const credential = new BrokerCredential({ baseUrl: broker.url, apiKey: admin.key });
    const pipeline = createEmptyPipeline();
    pipeline.addPolicy(bearerTokenAuthenticationPolicy({ credential, scopes: GRAPH }));
    const client = createDefaultHttpClient();
    for (const pathname of ["/v1.0/me", "/v1.0/me/messages"]) {
      const request = createPipelineRequest({ url: `${recorder.url}${pathname}`, timeout: 10_000 });
      request.tlsSettings = { ca: tls.cert }; // trust the test's self-signed certificate
      const response = await pipeline.sendRequest(client, request);
      assert.equal(response.status, 200);
    }
    const direct = await askBroker(broker.url, GRAPH, admin.key);
    assert.deepEqual(recorder.seen, [
      { url: "/v1.0/me", authorization: `Bearer ${direct.body.token}` },
      { url: "/v1.0/me/messages", authorization: `Bearer ${direct.body.token}` },
    ]);
  });
});
