// Seeds the API keys every test file uses (storage is isolated per test file, so per file).
import { env } from "cloudflare:workers";
import { sha256Hex } from "../../src/crypto";
import { apiKeyKvKey } from "../../src/middleware/auth";
import { KEYS } from "../helpers";

const seed = async (key: string, rec: object) =>
  env.SESSIONS.put(apiKeyKvKey(await sha256Hex(key)), JSON.stringify({ created: 1764288000, ...rec }));

await seed(KEYS.a, { tenant: "tenant-a", name: "a" });
await seed(KEYS.a2, { tenant: "tenant-a", name: "a-second" });
await seed(KEYS.b, { tenant: "tenant-b", name: "b" });
await seed(KEYS.limited, { tenant: "tenant-c", name: "limited", rateLimitPerMinute: 2 });
await seed(KEYS.unlimited, { tenant: "tenant-a", name: "unlimited", rateLimitPerMinute: 0 });
