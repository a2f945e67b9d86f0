// Every shipped example exported with --format torch matches the float64 reference
// interpreter (docs/export.md): same weights, same inputs, relative L2 < 1e-5 in float64.
import { type TorchCase, describeTorchCases } from "./torch-harness.js";

const small = ["layers=2", "d=16", "heads=2", "vocab=12"];
const CASES: TorchCase[] = [
  { name: "tiny-transformer", file: "examples/tiny-transformer.moe", dims: { B: 2, T: 5 } },
  {
    name: "task-moe",
    file: "examples/task-moe.moe",
    set: ["layers=2", "d=16", "vocab=12"],
    dims: { B: 3, T: 4 },
  },
  {
    name: "gpt2-adapters",
    file: "examples/gpt2-adapters.moe",
    set: [...small, "context=8"],
    dims: { B: 3, T: 4 },
  },
  {
    name: "gpt2-mini",
    file: "examples/gpt2.moe",
    model: "GPT2Mini",
    set: small,
    dims: { B: 2, T: 4 },
  },
  {
    name: "mixtral",
    file: "examples/mixtral.moe",
    set: [...small, "hidden=24", "experts=4"],
    dims: { B: 2, T: 5 },
  },
  {
    name: "at-moe-backbone",
    file: "examples/at-moe.moe",
    model: "Backbone",
    set: ["layers=2", "d=16", "vocab=12"],
    dims: { B: 2, T: 3 },
  },
  {
    name: "road-distill-student",
    file: "examples/road-distill.moe",
    model: "Student",
    set: small,
    dims: { B: 2, T: 4 },
  },
  {
    name: "road-distill-base",
    file: "examples/road-distill.moe",
    model: "BaseTeacher",
    set: small,
    dims: { B: 2, T: 4 },
  },
  { name: "symbol-maps", file: "examples/symbol-maps.moe", dims: { B: 6 } },
  {
    name: "repro-adapters-decoder",
    file: "examples/repro/adapters.moe",
    model: "Decoder",
    set: ["d=16"],
    dims: { B: 2, T: 4 },
  },
  {
    name: "repro-adapters-taskrow",
    file: "examples/repro/adapters.moe",
    model: "TaskRow",
    set: ["d=16"],
    dims: { B: 2, T: 4 },
  },
  {
    name: "repro-adapters-adapted",
    file: "examples/repro/adapters.moe",
    model: "Adapted",
    set: ["d=16"],
    dims: { B: 3, T: 4 },
  },
  {
    name: "repro-distill-multi",
    file: "examples/repro/distill.moe",
    model: "MultiTask",
    dims: { B: 5 },
  },
  {
    name: "repro-distill-single",
    file: "examples/repro/distill.moe",
    model: "SingleTask",
    dims: { B: 5 },
  },
  {
    name: "repro-grouped-backbone",
    file: "examples/repro/grouped-lora.moe",
    model: "Backbone",
    set: ["d=16"],
    dims: { B: 2, T: 4 },
  },
  {
    name: "repro-mot-dense",
    file: "examples/repro/mixture-of-tokens.moe",
    model: "Dense",
    dims: { B: 6 },
  },
  { name: "repro-task-dense", file: "examples/repro/task-moe.moe", model: "Dense", dims: { B: 6 } },
  {
    name: "repro-task-agnostic",
    file: "examples/repro/task-moe.moe",
    model: "Agnostic",
    dims: { B: 6 },
  },
  {
    name: "repro-task-level",
    file: "examples/repro/task-moe.moe",
    model: "TaskLevel",
    dims: { B: 6 },
  },
  {
    name: "repro-task-token",
    file: "examples/repro/task-moe.moe",
    model: "TaskToken",
    dims: { B: 6 },
  },
  {
    name: "at-moe",
    file: "examples/at-moe.moe",
    model: "ATMoEModel",
    set: ["layers=2", "d=16", "vocab=12"],
    dims: { B: 2, T: 3 },
  },
  {
    name: "repro-grouped-solo",
    file: "examples/repro/grouped-lora.moe",
    model: "Solo",
    set: ["d=16"],
    dims: { B: 2, T: 4 },
  },
  {
    name: "repro-grouped-fused",
    file: "examples/repro/grouped-lora.moe",
    model: "Fused",
    set: ["d=16"],
    dims: { B: 2, T: 4 },
  },
  {
    name: "mixture-of-tokens",
    file: "examples/mixture-of-tokens.moe",
    set: ["layers=2", "d=16", "vocab=12", "experts=4", "group=2"],
    dims: { B: 3, T: 3 },
  },
  {
    name: "repro-mot",
    file: "examples/repro/mixture-of-tokens.moe",
    model: "MoT",
    dims: { B: 16 },
  },
  {
    name: "repro-mot-discrete",
    file: "examples/repro/mixture-of-tokens.moe",
    model: "MoT",
    set: ["discrete=true"],
    dims: { B: 16 },
  },
  // Free dims stay free: the same classes at other batch and sequence sizes.
  { name: "tiny-transformer-b3-t7", file: "examples/tiny-transformer.moe", dims: { B: 3, T: 7 } },
  {
    name: "task-moe-b5-t2",
    file: "examples/task-moe.moe",
    set: ["layers=2", "d=16", "vocab=12"],
    dims: { B: 5, T: 2 },
  },
];

describeTorchCases("moec export --format torch: examples", CASES);
