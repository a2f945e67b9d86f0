// `moec run`'s --merge-adapters and --pin-groups on `moec export --format torch`: the exported
// module with the option matches `moec run --backend reference` with the same option (float64,
// relative L2 < 1e-5), on the same weights. The pins differ from the source's own `pin:`, so a
// module that ignored them would not match.
import { type TorchCase, describeTorchCases } from "./torch-harness.js";

const routers = "test/export/fixtures/routers.moe";
const CASES: TorchCase[] = [
  {
    name: "pinned",
    file: routers,
    model: "Pinned",
    dims: { B: 2, T: 3 },
    pinGroups: ["moe=0.2,0.8"],
  },
  {
    name: "pinned-at-moe",
    file: "examples/at-moe.moe",
    model: "ATMoEModel",
    set: ["layers=2", "d=16", "vocab=12"],
    dims: { B: 2, T: 3 },
    pinGroups: ["blocks.1=0.1,0.6,0.3"],
  },
  {
    name: "merged-linear",
    file: routers,
    model: "LoraOnLinear",
    dims: { B: 4 },
    mergeAdapters: true,
    scale: 1.0,
  },
  {
    name: "merged-targets",
    file: "test/export/fixtures/targets.moe",
    model: "Targeted",
    dims: { B: 2, T: 3 },
    mergeAdapters: true,
    scale: 1.0,
  },
  {
    name: "merged-shared-targets",
    file: "test/export/fixtures/with.moe",
    model: "SharedTargets",
    dims: { B: 5 },
    mergeAdapters: true,
    scale: 1.0,
  },
  {
    name: "merged-per-task",
    file: "test/export/fixtures/adapters.moe",
    model: "SharedBaseTaskLoras",
    dims: { B: 8, T: 2 },
    noTask: true,
    mergeAdapters: true,
    scale: 1.0,
  },
];

describeTorchCases("moec export --format torch: --merge-adapters, --pin-groups", CASES);
