// Constructs the PyTorch export once refused, each against the float64 reference interpreter
// with state_dict() keys equal to `moec params`: members named as Python keywords or
// nn.Module attributes (fixtures/names.moe); adapters attached with `with` to a base bound
// elsewhere, made in the same expression or handed in as a `Module` (fixtures/with.moe);
// weights of every dtype (fixtures/dtypes.moe).
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
];

describeTorchCases("moec export --format torch: constructs", CASES);
