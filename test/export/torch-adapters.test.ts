// Adapters in the PyTorch export, in mixed-task batches with examples of no task (-1): per-task
// LoRAs on a base made with them or bound elsewhere, a LoRA on a whole FFN, LoRAs placed by
// `targets` (PEFT's target_modules), per task or shared, per-task ranks and alphas, per-task
// bottlenecks of per-task sizes; and the language constructs of fixtures/layers.moe (instances
// made and applied in one expression, constants, else, records of outputs); against the
// reference interpreter.
import { type TorchCase, describeTorchCases } from "./torch-harness.js";

const file = "test/export/fixtures/adapters.moe";
const CASES: TorchCase[] = (
  [
    { name: "TaskLoras", file, model: "TaskLoras", dims: { B: 8, T: 3 }, noTask: true },
    { name: "TaskLoraRanks", file, model: "TaskLoraRanks", dims: { B: 7, T: 2 }, noTask: true },
    { name: "InlineLora", file, model: "InlineLora", dims: { B: 5 } },
    {
      name: "SharedBaseTaskLoras",
      file,
      model: "SharedBaseTaskLoras",
      dims: { B: 8, T: 2 },
      noTask: true,
    },
    { name: "BottleneckOnBase", file, model: "BottleneckOnBase", dims: { B: 4 } },
    {
      name: "TaskBottleneckOnBase",
      file,
      model: "TaskBottleneckOnBase",
      dims: { B: 7, T: 2 },
      noTask: true,
    },
    {
      name: "Targets",
      file: "test/export/fixtures/targets.moe",
      model: "Targeted",
      dims: { B: 2, T: 3 },
    },
    {
      name: "TaskTargets",
      file: "test/export/fixtures/targets.moe",
      model: "TaskTargeted",
      dims: { B: 7, T: 3 },
      noTask: true,
    },
    {
      name: "SharedTaskTargets",
      file: "test/export/fixtures/targets.moe",
      model: "SharedTaskTargeted",
      dims: { B: 6, T: 2 },
      noTask: true,
    },
    {
      name: "InlineLayers",
      file: "test/export/fixtures/layers.moe",
      model: "Inline",
      dims: { B: 5 },
    },
    {
      name: "InlineLayersGated",
      file: "test/export/fixtures/layers.moe",
      model: "Inline",
      set: ["gated=true", "layers=3"],
      dims: { B: 5 },
    },
    { name: "TaskBottlenecks", file, model: "TaskBottlenecks", dims: { B: 8, T: 2 }, noTask: true },
  ] as TorchCase[]
).map((c) => ({ ...c, scale: 1.0 }));

describeTorchCases("moec export --format torch: adapters and layers", CASES);
