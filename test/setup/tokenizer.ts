// Setup file of the "worker-light" project: only the tokenizer (prompts are still encoded), no weights.
import { seedEdgeModel } from "./seed";

await seedEdgeModel(true);
