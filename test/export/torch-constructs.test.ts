// Constructs the PyTorch export once refused, each against the float64 reference interpreter
// with state_dict() keys equal to `moec params`: members named as Python keywords or
// nn.Module attributes (fixtures/names.moe).
import { type TorchCase, describeTorchCases } from "./torch-harness.js";

const CASES: TorchCase[] = [
  {
    name: "keyword-members",
    file: "test/export/fixtures/names.moe",
    model: "Keywords",
    dims: { B: 4 },
  },
];

describeTorchCases("moec export --format torch: constructs", CASES);
