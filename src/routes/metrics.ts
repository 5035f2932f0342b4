/**
 * `GET /metrics`: the resume policy's counters and the rates it decides from, in Prometheus text
 * format, per backend and model (src/sessions/rates.ts keeps them in KV).
 *
 *   reprise_resume_decisions_total{backend="gpu",model="…",restore="coded"} 12
 *   reprise_resume_fallbacks_total{backend="gpu",model="…",reason="mac"} 1
 *   reprise_resume_rate{backend="gpu",model="…",rate="prefill_tokens_per_second"} 1843.2
 */
import { Hono } from "hono";
import type { AppEnv } from "../env";
import { listRateRecords } from "../sessions/rates";

export const metrics = new Hono<AppEnv>();

const RATE_NAMES: Record<string, string> = {
  prefillTokPerS: "prefill_tokens_per_second",
  transferBytesPerS: "transfer_bytes_per_second",
  decodeBytesPerS: "decoder_bytes_per_second",
  verifyBytesPerS: "verify_bytes_per_second",
  firstByteS: "first_byte_seconds",
  codedRatio: "coded_bytes_per_raw_byte",
};

const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

/** `name{a="b"}` with extra labels merged in front of the counter's own. */
function withLabels(metric: string, labels: string): string {
  const i = metric.indexOf("{");
  return i < 0 ? `${metric}{${labels}}` : `${metric.slice(0, i)}{${labels},${metric.slice(i + 1)}`;
}

metrics.get("/", async (c) => {
  // Prometheus wants every sample of a metric family together, after its one TYPE line.
  const families = new Map<string, { type: string; samples: string[] }>();
  const add = (base: string, type: string, sample: string) => {
    if (!families.has(base)) families.set(base, { type, samples: [] });
    families.get(base)!.samples.push(sample);
  };
  for (const { backend, model, rec } of await listRateRecords(c.env.SESSIONS)) {
    const labels = `backend="${esc(backend)}",model="${esc(model)}"`;
    for (const [name, value] of Object.entries(rec.counters).sort()) add(name.split("{")[0]!, "counter", `${withLabels(name, labels)} ${value}`);
    for (const [k, v] of Object.entries(rec.rates)) if (typeof v === "number") add("reprise_resume_rate", "gauge", `reprise_resume_rate{${labels},rate="${RATE_NAMES[k] ?? k}"} ${v}`);
    add("reprise_resume_can_code", "gauge", `reprise_resume_can_code{${labels}} ${rec.canCode ? 1 : 0}`);
  }
  const lines = [...families].flatMap(([base, f]) => [`# TYPE ${base} ${f.type}`, ...f.samples]);
  return c.text(lines.join("\n") + "\n", 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
});
