/**
 * The standard library's primitives as one table, mirroring stdlib/: every rule by name, and
 * where each std name lives. The pipeline hands it to the evaluator and to lowering.
 */
import type { LoweredLibrary } from "../lower/lowering-hooks.js";
import { PRIMITIVES } from "./primitives.js";

const HOMES: Record<string, string> = {
  Linear: "std.nn",
  Embedding: "std.nn",
  LayerNorm: "std.nn",
  RMSNorm: "std.nn",
  FFN: "std.nn",
  SwiGLU: "std.nn",
  Attention: "std.nn",
  TopK: "std.route",
  ExpertChoice: "std.route",
  Grouped: "std.route",
  TokenMix: "std.route",
  TaskRoute: "std.route",
  TaskMap: "std.route",
  Soft: "std.route",
  MoE: "std.route",
  LoRA: "std.adapt",
  Bottleneck: "std.adapt",
  AdamW: "std.optim",
};

export const STANDARD_LIBRARY: LoweredLibrary = {
  rules: PRIMITIVES,
  homes: new Map(Object.entries(HOMES)),
};
