// Starts the webhook receiver (a real Node HTTP server, test/receiver/server.mjs) for the whole run,
// on the port vitest.config.ts chose and named in the Worker's settings. Each vitest project runs
// its global setup, so the first one starts the server and the others share it.
import type { Server } from "node:http";
// @ts-expect-error a plain .mjs module without types
import { startReceiver } from "../receiver/server.mjs";

const shared = globalThis as { __repriseReceiver?: { server: Server; users: number } };

export default async function setup() {
  if (!shared.__repriseReceiver)
    shared.__repriseReceiver = { server: ((await startReceiver(Number(process.env.REPRISE_TEST_RECEIVER_PORT))) as { server: Server }).server, users: 0 };
  const r = shared.__repriseReceiver;
  r.users++;
  return () =>
    new Promise<void>((resolve) => {
      if (--r.users > 0) return resolve();
      shared.__repriseReceiver = undefined;
      r.server.closeAllConnections();
      r.server.close(() => resolve());
    });
}
