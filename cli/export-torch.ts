/** `moec export --format torch`: not built yet (issue #15); being written on its own branch. */
import type { ExportFormat } from "./export-format.js";
import { CliError, EXIT_USAGE } from "./report.js";

export const exportTorch: ExportFormat = () =>
  Promise.reject(new CliError("--format torch is not built yet", EXIT_USAGE));
