import { Hono } from "hono";

const app = new Hono();
const body = {
  object: "list",
  data: [{ id: "smollm2-135m-instruct", object: "model", created: 1764288000, owned_by: "reprise" }],
};
app.get("/v1/models", (c) => c.json(body));

export default app;
