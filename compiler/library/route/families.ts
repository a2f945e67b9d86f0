/** Every router family of std.route, by the name its `primitive` declaration uses. */
import { expertChoice } from "./expert-choice.js";
import { grouped } from "./grouped.js";
import { hash } from "./hash.js";
import type { RouterFamily } from "./router-family.js";
import { soft } from "./soft.js";
import { taskMap } from "./task-map.js";
import { taskRoute } from "./task-route.js";
import { tokenMix } from "./token-mix.js";
import { topK } from "./top-k.js";

export const ROUTER_FAMILIES: ReadonlyMap<string, RouterFamily> = new Map(
  [topK, expertChoice, taskRoute, taskMap, grouped, tokenMix, soft, hash].map((f) => [f.name, f]),
);
