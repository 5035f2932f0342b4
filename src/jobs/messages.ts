/**
 * Queue messages (each well under Queues' 128 KB limit: ids only; the state they point at lives in
 * the tenant's Durable Object).
 */

/** "Run job `jobId` of `tenant`" on the JOBS queue. */
export interface JobMessage {
  kind: "job";
  tenant: string;
  jobId: string;
}

/**
 * "Make attempt `attempt` of round `round` of event `eventId` to endpoint `endpointId`" on the
 * DELIVERIES queue. Round and attempt fence duplicates: the tenant's object hands out each
 * (round, attempt) once, so a message the queue delivers twice sends at most one request.
 */
export interface DeliveryMessage {
  kind: "delivery";
  tenant: string;
  eventId: string;
  endpointId: string;
  round: number;
  attempt: number;
}

export type QueueMessage = JobMessage | DeliveryMessage;

/** The tenant's Durable Object. */
export function tenantStore(env: { TENANTS: DurableObjectNamespace<import("../durable/tenant-store").TenantStore> }, tenant: string) {
  return env.TENANTS.get(env.TENANTS.idFromName(tenant));
}

/** The messages of a batch grouped by tenant, so each tenant's object is called once per step. */
export function byTenant<M extends { body: { tenant: string } }>(messages: readonly M[]): Map<string, M[]> {
  const out = new Map<string, M[]>();
  for (const m of messages) out.set(m.body.tenant, [...(out.get(m.body.tenant) ?? []), m]);
  return out;
}
