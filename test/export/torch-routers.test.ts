// Every router family the PyTorch export supports, against the reference interpreter: top-k
// with capacity (overflow residual and zero, softmax after), top-1 with shared experts,
// expert choice, soft, hash, task routing at each level, task maps with two outputs, grouped
// routing pinned and on an instruction (FFN experts, and LoRA experts over one base).
import { type TorchCase, describeTorchCases } from "./torch-harness.js";

const file = "test/export/fixtures/routers.moe";
const models: [string, Record<string, number>][] = [
  ["TopKCapacity", { B: 3, T: 5 }],
  ["TopKZero", { B: 3, T: 5 }],
  ["TopOne", { B: 2, T: 3 }],
  ["TopKNoRenorm", { B: 7 }],
  ["Choice", { B: 3, T: 3 }],
  ["SoftMix", { B: 2, T: 3 }],
  ["Hashed", { B: 2, T: 6 }],
  ["RouteToken", { B: 4, T: 3 }],
  ["RouteSequence", { B: 4, T: 3 }],
  ["RouteTask", { B: 4, T: 3 }],
  ["Mapped", { B: 4, T: 2 }],
  ["Pinned", { B: 2, T: 3 }],
  ["LoraOnLinear", { B: 3 }],
  ["MixSequence", { B: 2, T: 5 }],
  ["MixBatch", { B: 4, T: 2 }],
  ["MixDiscrete", { B: 7 }],
  ["Instructed", { B: 3, T: 5 }],
  ["InstructedLora", { B: 1, T: 7 }],
];
const CASES: TorchCase[] = models.map(([model, dims]) => ({
  name: model,
  file,
  model,
  dims,
  ids: { tokens: 50 },
  scale: 1.0,
}));

describeTorchCases("moec export --format torch: routers", CASES);
