// Starts the webhook receiver (a real Node HTTP server, test/receiver/server.mjs) for the whole run,
// on the port vitest.config.ts chose and named in the Worker's settings.
// @ts-expect-error a plain .mjs module without types
import { startReceiver } from "../receiver/server.mjs";

export default async function setup() {
  const { server } = (await startReceiver(Number(process.env.REPRISE_TEST_RECEIVER_PORT))) as { server: import("node:http").Server };
  return () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
}
