/**
 * What `moec export`'s formats share (cli/export-command.ts runs them): the options, the
 * header every exported file carries, and the shape of a format.
 */
import type { FileData } from "../runtime/atomic-write.js";
import type { ModelOptions } from "./model-options.js";

/** The version written into every exported file's header. */
export const MOEC_VERSION = "0.1.0";

export interface ExportOptions extends ModelOptions {
  format?: string;
  output?: string;
  /** ONNX only: the weight options of `moec run`. */
  weights?: string;
  weightsMap?: string;
  /** `[task=]dir`, repeatable (one per task for `per task` LoRAs). */
  adapter?: string[];
  initMissing?: boolean;
  allowNonfinite?: boolean;
  seed?: string;
}

/** What every exported file says about where it came from. */
export interface ExportHeader {
  /** The source file as the user named it. */
  source: string;
  model: string;
  version: string;
}

/** One file an export writes: the main file first, then any beside it (ONNX external data). */
export interface ExportedFile {
  path: string;
  /** Bytes, text, or chunks in order (ONNX external data past 4 GiB is no single array). */
  data: FileData;
}

/**
 * A format: from the source file and the options to the files to write. `output` is the
 * checked main file's path; `header` is filled in once the format knows the model's name.
 */
export type ExportFormat = (
  file: string,
  options: ExportOptions,
  output: (model: string) => string,
  header: (model: string) => ExportHeader,
) => Promise<ExportedFile[]>;
