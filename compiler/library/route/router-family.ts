/**
 * A router family: everything the compiler knows about one router of `std.route` beyond its
 * `primitive` declaration (options and defaults), in one file per family beside this one. The
 * MoE layer (moe.ts) asks the family of its router what it checks, what the layer takes beside
 * x, which parameters it owns, how many experts a token uses and how it lowers; families.ts
 * lists them by name. A new router is one family file, its row in families.ts and its
 * `primitive` in stdlib/route.moe.
 */
import type { PrimitiveContext } from "../../check/primitive-rule.js";
import type { Instance } from "../../check/values.js";
import type { MoeLowering } from "../../lower/routing/common.js";

/**
 * What an MoE layer takes beside x, by its router: `moe(x)`, `moe(x, task)`, `moe(x, tokens)`,
 * `moe(x, instruction)` (f32 features, one vector per sequence).
 */
export type RoutingInput = "none" | "task ids" | "token ids" | "instruction";

/** The experts of one MoE layer, as construction sees them. */
export interface ExpertLayout {
  /** The number of experts; undefined while a list's length is symbolic. */
  E: number | undefined;
  /** Sizes of the expert groups (NaN where symbolic); empty unless the family groups experts. */
  groups: number[];
  /** Whether some expert count is symbolic. */
  symbolic: boolean;
}

/** The sizes a router's parameters and active-expert count depend on (elaboration). */
export interface RouterShape {
  /** Experts. */
  E: number;
  /** The experts' input width. */
  d: number;
  /** Expert groups (0 for a flat expert list). */
  groups: number;
  /** Tasks of the layer's task set (0 unless the router routes on task ids). */
  tasks: number;
  /** Their names, in task-id order (a task-indexed table's rows). */
  taskNames: string[];
}

export interface RouterFamily {
  /** The primitive's name in std.route (`TopK`). */
  readonly name: string;
  /** Experts come as a list of groups, `[[E; 4]; 3]`, rather than a flat list. */
  readonly grouped?: boolean;
  /** The router's own option checks (ranges, warnings), when it is constructed. */
  checkOptions(ctx: PrimitiveContext): void;
  /** What the MoE layer takes beside x. */
  routingInput(router: Instance): RoutingInput;
  /** Checks against the layer's experts (k ≤ E, pins per group), at MoE construction. */
  checkExperts?(ctx: PrimitiveContext, router: Instance, experts: ExpertLayout): void;
  /** Checks against the layer's task set (`routingInput` "task ids"), once it is known. */
  checkTasks?(
    ctx: PrimitiveContext,
    router: Instance,
    experts: ExpertLayout,
    taskSet: string,
  ): void;
  /** Registers the router's parameters (elaboration), under the router's path. */
  registerParams(ctx: PrimitiveContext, router: Instance, shape: RouterShape): void;
  /** Experts evaluated per token, on average (for active-parameter accounting). */
  activeExperts(router: Instance, shape: RouterShape): number;
  /** IR for the layer's routed output [..., dOut] (shared experts are added by the layer). */
  lower(m: MoeLowering): number | undefined;
}

/** The path under which a router's parameters live. */
export function routerPath(router: Instance): string {
  return router.path ?? "router";
}
