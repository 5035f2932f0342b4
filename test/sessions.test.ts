import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { acquireLease, chunkKey, commitTurn, getSession, releaseLease, renewLease } from "../src/sessions/store";
import type { SessionRecord } from "../src/sessions/store";
import { sha256Hex } from "../src/crypto";
import { api, errorOf, KEYS, r2Keys } from "./helpers";

async function newSession(key: string = KEYS.a): Promise<string> {
  const res = await api("/v1/sessions", { method: "POST", key });
  expect(res.status).toBe(201);
  const body = (await res.json()) as { id: string; object: string };
  expect(body.object).toBe("session");
  return body.id;
}

const nextOf = (rec: SessionRecord, extra: Partial<SessionRecord> = {}) => ({
  id: rec.id,
  tenant: rec.tenant,
  created: rec.created,
  turns: rec.turns + 1,
  messages: rec.messages,
  tokenIds: [1, 2, 3],
  chunks: rec.chunks,
  nextChunk: rec.nextChunk,
  ...extra,
});

async function fakeChunk(start: number, end: number) {
  const bytes = new Uint8Array([1, 2, 3, start, end]);
  return { bytes, tokenStart: start, tokenEnd: end, producer: "test", sha256: await sha256Hex(bytes) };
}

describe("Sessions", () => {
  describe("POST /v1/sessions", () => {
    it("should create an empty session", async () => {
      const id = await newSession();
      const res = await api(`/v1/sessions/${id}`);
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ id, object: "session", turns: 0, tokens: 0, stored_bytes: 0, chunks: 0 });
    });
    it("should refuse unknown fields and non-JSON", async () => {
      expect((await errorOf(await api("/v1/sessions", { body: { x: 1 } }))).param).toBe("x");
      expect((await errorOf(await api("/v1/sessions", { raw: "{" }))).code).toBe("invalid_json");
      expect((await api("/v1/sessions", { body: {} })).status).toBe(201);
    });
  });

  describe("tenancy", () => {
    it("should answer 404 to another tenant for get, delete and chat", async () => {
      const id = await newSession(KEYS.a);
      expect((await api(`/v1/sessions/${id}`, { key: KEYS.b })).status).toBe(404);
      expect((await api(`/v1/sessions/${id}`, { method: "DELETE", key: KEYS.b })).status).toBe(404);
      const chat = await api("/v1/chat/completions", {
        key: KEYS.b,
        body: { model: "smollm2-135m-instruct", session_id: id, messages: [{ role: "user", content: "hi" }] },
      });
      expect(await errorOf(chat)).toMatchObject({ status: 404, code: "session_not_found", param: "session_id" });
      // Still there for its owner, and for another key of the same tenant.
      expect((await api(`/v1/sessions/${id}`, { key: KEYS.a })).status).toBe(200);
      expect((await api(`/v1/sessions/${id}`, { key: KEYS.a2 })).status).toBe(200);
    });
  });

  describe("DELETE /v1/sessions/:id", () => {
    it("should remove the record and every blob under the session's prefix", async () => {
      const id = await newSession();
      const other = await newSession();
      for (let n = 0; n < 3; n++) await env.BLOBS.put(chunkKey(id, n), new Uint8Array(10 + n));
      await env.BLOBS.put(chunkKey(other, 0), new Uint8Array(5));
      expect(await r2Keys(`sessions/${id}/`)).toHaveLength(3);
      const res = await api(`/v1/sessions/${id}`, { method: "DELETE" });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ id, deleted: true, deleted_chunks: 3 });
      expect(await r2Keys(`sessions/${id}/`)).toEqual([]);
      expect((await api(`/v1/sessions/${id}`)).status).toBe(404);
      expect((await api(`/v1/sessions/${id}`, { method: "DELETE" })).status).toBe(404);
      // A neighbour's blobs are untouched.
      expect(await r2Keys(`sessions/${other}/`)).toEqual([chunkKey(other, 0)]);
    });
  });

  describe("turn lease and commit", () => {
    it("should refuse a second lease while one is live, and grant it after release", async () => {
      const id = await newSession();
      const rec = await getSession(env.SESSIONS, id, "tenant-a");
      const lease = await acquireLease(env, rec);
      await expect(acquireLease(env, rec)).rejects.toMatchObject({ status: 409, code: "session_busy" });
      await releaseLease(env, id, lease);
      const again = await acquireLease(env, rec);
      await releaseLease(env, id, again);
    });

    it("should grant exactly one of many racing leases (the session's Durable Object decides)", async () => {
      const id = await newSession();
      const rec = await getSession(env.SESSIONS, id, "tenant-a");
      const tries = await Promise.allSettled(Array.from({ length: 12 }, () => acquireLease(env, rec)));
      const won = tries.filter((t) => t.status === "fulfilled");
      expect(won).toHaveLength(1);
      for (const t of tries) if (t.status === "rejected") expect(t.reason).toMatchObject({ status: 409, code: "session_busy" });
      // Renewal works for the holder only; after release, nobody holds it.
      const lease = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof acquireLease>>>).value;
      expect(await renewLease(env, id, lease)).toBe(true);
      expect(await renewLease(env, id, { ...lease, holder: "someone-else" })).toBe(false);
      await releaseLease(env, id, lease);
      expect(await renewLease(env, id, lease)).toBe(false);
    });

    it("should refuse a lease to a turn that read a record older than the last commit (stale read)", async () => {
      const id = await newSession();
      const rec = await getSession(env.SESSIONS, id, "tenant-a");
      const lease = await acquireLease(env, rec);
      const after = await commitTurn(env.SESSIONS, env.BLOBS, lease, nextOf(rec), null);
      await releaseLease(env, id, lease, after.revision);
      // `rec` is revision 0, as a lagging KV replica elsewhere could still return it.
      await expect(acquireLease(env, rec)).rejects.toMatchObject({ status: 409, code: "session_busy" });
      const fresh = await getSession(env.SESSIONS, id, "tenant-a");
      await releaseLease(env, id, await acquireLease(env, fresh));
    });

    it("should commit over the leased revision and append chunks create-only", async () => {
      const id = await newSession();
      const rec = await getSession(env.SESSIONS, id, "tenant-a");
      const lease = await acquireLease(env, rec);
      const after = await commitTurn(env.SESSIONS, env.BLOBS, lease, nextOf(rec), await fakeChunk(0, 2));
      await releaseLease(env, id, lease, after.revision);
      expect(after).toMatchObject({ revision: 1, turns: 1, nextChunk: 1 });
      expect(after.chunks).toEqual([
        expect.objectContaining({ r2Key: chunkKey(id, 0), tokenStart: 0, tokenEnd: 2, bytes: 5 }),
      ]);
      expect(await r2Keys(`sessions/${id}/`)).toEqual([chunkKey(id, 0)]);
    });

    it("should lose no turn when two turns race: the late commit gets 409 and leaves nothing behind", async () => {
      const id = await newSession();
      const rec = await getSession(env.SESSIONS, id, "tenant-a");
      // Two turns that both started from revision 0: the second line of defence, below the lease
      // (as when the lease lived in KV and one turn's lease could be hidden from the other).
      const l1 = { holder: "one", revision: 0, expires: Date.now() + 60_000 };
      const l2 = { holder: "two", revision: 0, expires: Date.now() + 60_000 };
      await commitTurn(env.SESSIONS, env.BLOBS, l1, nextOf(rec, { tokenIds: [7] }), await fakeChunk(0, 1));
      // Same chunk number: the create-only put refuses to overwrite chunk 0.
      await expect(
        commitTurn(env.SESSIONS, env.BLOBS, l2, nextOf(rec, { tokenIds: [8] }), await fakeChunk(0, 1)),
      ).rejects.toMatchObject({ status: 409, code: "session_busy" });
      // No chunk: the revision check refuses it.
      await expect(commitTurn(env.SESSIONS, env.BLOBS, l2, nextOf(rec, { tokenIds: [8] }), null)).rejects.toMatchObject({
        status: 409,
      });
      const now = await getSession(env.SESSIONS, id, "tenant-a");
      expect(now).toMatchObject({ revision: 1, tokenIds: [7] });
      expect(await r2Keys(`sessions/${id}/`)).toEqual([chunkKey(id, 0)]);
      const blob = await env.BLOBS.get(chunkKey(id, 0));
      expect(blob?.customMetadata?.lease).toBe("one");
    });

    it("should remove its blob and answer 404 when the session was deleted mid-turn", async () => {
      const id = await newSession();
      const rec = await getSession(env.SESSIONS, id, "tenant-a");
      const lease = await acquireLease(env, rec);
      expect((await api(`/v1/sessions/${id}`, { method: "DELETE" })).status).toBe(200);
      await expect(commitTurn(env.SESSIONS, env.BLOBS, lease, nextOf(rec), await fakeChunk(0, 2))).rejects.toMatchObject({
        status: 404,
      });
      expect(await r2Keys(`sessions/${id}/`)).toEqual([]);
    });
  });
});
