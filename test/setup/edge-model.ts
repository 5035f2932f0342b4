// Setup file of the "worker" project: the edge model and its tokenizer in this test file's R2 (seed.ts).
import { seedEdgeModel } from "./seed";

await seedEdgeModel();
