// Constructs the PyTorch export once refused, each against the float64 reference interpreter
// with state_dict() keys equal to `moec params`: members named as Python keywords or
// nn.Module attributes (fixtures/names.moe); adapters attached with `with` to a base bound
// elsewhere, made in the same expression or handed in as a `Module` (fixtures/with.moe);
// weights of every dtype (fixtures/dtypes.moe); MoE parts bound to names, `per task` applied
// in one expression, `frozen` of a bound instance, a name bound again, stacked adapters
// (fixtures/bindings.moe).
import { type TorchCase, describeTorchCases } from "./torch-harness.js";

const CASES: TorchCase[] = [
  {
    name: "keyword-members",
    file: "test/export/fixtures/names.moe",
    model: "Keywords",
    dims: { B: 4 },
  },
  ...["SharedTargets", "InlineModuleAdapter", "AppliedAdapters", "HandedIn"].map(
    (model): TorchCase => ({
      name: `with-${model}`,
      file: "test/export/fixtures/with.moe",
      model,
      dims: { B: 5 },
      scale: 1.0,
    }),
  ),
  {
    name: "dtypes-halves",
    file: "test/export/fixtures/dtypes.moe",
    model: "Halves",
    dims: { B: 3 },
  },
  {
    name: "dtypes-integers",
    file: "test/export/fixtures/dtypes.moe",
    model: "Integers",
    dims: { B: 3, T: 4 },
    ids: { ids: 8 },
  },
  ...["BoundParts", "PerTaskApplied", "BoundAgain", "FrozenAlias", "Stacked"].map(
    (model): TorchCase => ({
      name: `bindings-${model}`,
      file: "test/export/fixtures/bindings.moe",
      model,
      dims: model === "BoundParts" ? { B: 2, T: 3 } : { B: 6 },
      noTask: true,
      scale: 1.0,
    }),
  ),
];

describeTorchCases("moec export --format torch: constructs", CASES);
