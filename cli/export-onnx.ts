/** `moec export --format onnx`: not built yet (issue #15); being written on its own branch. */
import type { ExportFormat } from "./export-command.js";
import { CliError, EXIT_USAGE } from "./report.js";

export const exportOnnx: ExportFormat = () =>
  Promise.reject(new CliError("--format onnx is not built yet", EXIT_USAGE));
