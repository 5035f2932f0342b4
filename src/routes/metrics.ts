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
  const lines: string[] = [];
  const types = new Set<string>();
  for (const { backend, model, rec } of await listRateRecords(c.env.SESSIONS)) {
    const labels = `backend="${esc(backend)}",model="${esc(model)}"`;
    for (const [name, value] of Object.entries(rec.counters).sort()) {
      const base = name.split("{")[0]!;
      if (!types.has(base)) lines.push(`# TYPE ${base} counter`);
      types.add(base);
      lines.push(`${withLabels(name, labels)} ${value}`);
    }
    if (!types.has("reprise_resume_rate")) lines.push("# TYPE reprise_resume_rate gauge");
    types.add("reprise_resume_rate");
    for (const [k, v] of Object.entries(rec.rates)) if (typeof v === "number") lines.push(`reprise_resume_rate{${labels},rate="${RATE_NAMES[k] ?? k}"} ${v}`);
    lines.push(`reprise_resume_can_code{${labels}} ${rec.canCode ? 1 : 0}`);
  }
  return c.text(lines.join("\n") + "\n", 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
});
