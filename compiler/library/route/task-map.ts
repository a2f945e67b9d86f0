/**
 * A static task → experts map (`TaskMap({ en_de: [0, 1], ... })`): each token's task picks its
 * experts, equally weighted; no router parameters. Dense: every expert runs, weighted by a
 * constant task × expert table.
 */
import { dimValue } from "../../check/dims.js";
import { describeValue } from "../../check/values.js";
import {
  applyEach,
  constantTable,
  recordGateShare,
  routingStat,
  weightedSum,
} from "../../lower/routing/common.js";
import type { RouterFamily } from "./router-family.js";

export const taskMap: RouterFamily = {
  name: "TaskMap",
  checkOptions() {},
  routingInput: () => "task ids",
  checkTasks(ctx, router, { E }, taskSet) {
    const map = router.args.get("map");
    if (map?.k !== "record") return;
    const members = ctx.taskMembers(taskSet);
    const missing = members.filter((m) => !map.fields.has(m));
    const extra = [...map.fields.keys()].filter((k) => !members.includes(k));
    if (missing.length || extra.length) {
      ctx.report("E0406", router.span, `TaskMap does not match task set ${taskSet}`, {
        hint: [
          missing.length ? `missing ${missing.join(", ")}` : "",
          extra.length ? `not tasks of ${taskSet}: ${extra.join(", ")}` : "",
        ]
          .filter(Boolean)
          .join("; "),
      });
    }
    for (const [task, v] of map.fields) {
      const items = v.k === "list" ? v.items : [v];
      for (const x of items) {
        const i = x.k === "int" ? dimValue(x.v) : undefined;
        if (x.k !== "int")
          ctx.report(
            "E0301",
            map.keySpans.get(task) ?? router.span,
            `TaskMap: task \`${task}\` maps to ${describeValue(x)}; expected expert indices`,
          );
        else if (i !== undefined && E !== undefined && (i < 0 || i >= E)) {
          ctx.report(
            "E0402",
            map.keySpans.get(task) ?? router.span,
            `TaskMap: task \`${task}\` uses expert ${i}, but experts are numbered 0 to ${E - 1}`,
          );
        }
      }
    }
  },
  registerParams() {},
  activeExperts(router) {
    const map = router.args.get("map");
    if (map?.k !== "record") return 1;
    return Math.max(
      1,
      ...[...map.fields.values()].map((v) => (v.k === "list" ? v.items.length : 1)),
    );
  },
  lower(m) {
    const { r, router, x } = m;
    const ir = r.lowering.builder;
    const E = m.experts.length;
    const task = m.ids;
    if (task?.k !== "tensor" || task.node === undefined) return undefined;
    const map = router.args.get("map");
    const tasks = task.t.taskSet !== undefined ? r.ctx.taskMembers(task.t.taskSet) : [];
    if (map?.k !== "record") return undefined;
    const table = tasks.map((t) => {
      const v = map.fields.get(t);
      const ids = (v?.k === "list" ? v.items : v ? [v] : []).flatMap((i) =>
        i.k === "int" ? [dimValue(i.v)!] : [],
      );
      return [...Array(E).keys()].map((e) => (ids.includes(e) ? 1 / ids.length : 0));
    });
    // Task ids [B] pick rows [B, E]; broadcast over the token axes between B and d.
    let w = ir.gather(constantTable(ir, table), task.node);
    if (r.lowering.routingStats) recordGateShare(ir, routingStat(r), w);
    const xRank = ir.shape(x.node!).length;
    const wShape = ir.shape(w);
    w = ir.reshape(w, [...wShape.slice(0, -1), ...Array(xRank - wShape.length).fill(1), E]);
    const ys = applyEach(m, x);
    if (!ys) return undefined;
    return weightedSum(ir, w, ys);
  },
};
