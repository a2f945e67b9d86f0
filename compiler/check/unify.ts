/**
 * Unification of symbolic shapes. Variables (`?name#n`) stand for the free dimensions of a
 * component at one of its uses; rigid atoms (`d`, `B`) are fixed. An equation that cannot be
 * decided symbolically (non-linear, or involving an opaque quotient) is accepted: elaboration
 * re-checks it with concrete values.
 */
import {
  type Dim,
  displayAtom,
  dimAtoms,
  dimEquals,
  dimScale,
  dimSubstitute,
  dimSub,
  isVarAtom,
} from "./dims.js";
import type { TensorType } from "./values.js";

/** Leading dims bound to a sequence variable. */
export interface LeadBinding {
  lead?: string;
  dims: Dim[];
}

export type DimOutcome = "equal" | "unknown" | "mismatch";

export class Unifier {
  private readonly dims = new Map<string, Dim>();
  private readonly leads = new Map<string, LeadBinding>();
  private counter = 0;

  fresh(base: string): string {
    // `#v` keeps these apart from the per-instance atoms (`B#12`), which lowering makes variables too.
    return `?${displayAtom(base)}#v${++this.counter}`;
  }

  resolve(d: Dim): Dim {
    if (this.dims.size === 0 || !hasVariable(d)) return d;
    let cur = d;
    for (let i = 0; i < 64; i++) {
      const next = dimSubstitute(cur, (a) => (isVarAtom(a) ? this.dims.get(a) : undefined));
      if (next === cur || dimEquals(next, cur)) return next;
      cur = next;
    }
    return cur;
  }

  /** Makes `a` and `b` equal if possible, binding variables. */
  unifyDim(a: Dim, b: Dim): DimOutcome {
    const diff = dimSub(this.resolve(a), this.resolve(b));
    if (diff.size === 0) return "equal";
    const atoms = dimAtoms(diff);
    for (const v of atoms) {
      if (!isVarAtom(v)) continue;
      const c = diff.get(v);
      if (c !== 1 && c !== -1) continue;
      const rest = new Map(diff);
      rest.delete(v);
      if (dimAtoms(rest).includes(v)) continue;
      // c*v + rest = 0  =>  v = -rest / c
      this.dims.set(v, dimScale(rest, -1 / c));
      return "equal";
    }
    if (atoms.some((a) => isVarAtom(a) || a.startsWith("("))) return "unknown";
    return "mismatch";
  }

  /** Binds a sequence variable (from `...`) to leading dims. */
  bindLead(variable: string, binding: LeadBinding): void {
    this.leads.set(variable, binding);
  }

  leadOf(variable: string): LeadBinding | undefined {
    return this.leads.get(variable);
  }

  /** A tensor type with every solved variable replaced. */
  resolveTensor(t: TensorType): TensorType {
    if ((t.lead === undefined || !this.leads.has(t.lead)) && !t.dims.some(hasVariable)) return t;
    let dims = t.dims.map((d) => this.resolve(d));
    let lead = t.lead;
    for (let i = 0; lead !== undefined && i < 64; i++) {
      const b = this.leads.get(lead);
      if (!b) break;
      dims = [...b.dims.map((d) => this.resolve(d)), ...dims];
      lead = b.lead;
    }
    const out: TensorType = { ...t, dims };
    if (lead === undefined) delete out.lead;
    else out.lead = lead;
    return out;
  }
}

/** Where two shapes disagree: the position (1-based, from the left of `found`) and both dims. */
export interface ShapeConflict {
  kind: "rank" | "dim";
  position?: number;
  expected?: Dim;
  found?: Dim;
}

/**
 * Unifies a pattern type (a component's port, with variables) against an actual tensor type.
 * The pattern's `lead` variable absorbs the actual's extra leading dims.
 */
export function unifyTensor(
  u: Unifier,
  pattern: TensorType,
  actual: TensorType,
): ShapeConflict | undefined {
  const p = u.resolveTensor(pattern);
  const a = u.resolveTensor(actual);
  const np = p.dims.length;
  const na = a.dims.length;
  if (p.lead !== undefined && isVarAtom(p.lead)) {
    if (na < np && a.lead === undefined) return { kind: "rank" };
    const k = Math.min(np, na);
    for (let i = 0; i < k; i++) {
      const conflict = unifyAt(u, p.dims[np - k + i]!, a.dims[na - k + i]!, na - k + i + 1);
      if (conflict) return conflict;
    }
    const binding: LeadBinding = { dims: a.dims.slice(0, na - k) };
    if (a.lead !== undefined) binding.lead = a.lead;
    u.bindLead(p.lead, binding);
    return undefined;
  }
  if (a.lead !== undefined && isVarAtom(a.lead)) return unifyTensor(u, actual, pattern);
  if (p.lead !== a.lead) {
    // Both rigid but different, or one rigid and the other fixed rank: ranks cannot agree.
    if (p.lead === undefined || a.lead === undefined) return { kind: "rank" };
  }
  if (np !== na) return { kind: "rank" };
  for (let i = 0; i < np; i++) {
    const conflict = unifyAt(u, p.dims[i]!, a.dims[i]!, i + 1);
    if (conflict) return conflict;
  }
  return undefined;
}

function unifyAt(
  u: Unifier,
  expected: Dim,
  found: Dim,
  position: number,
): ShapeConflict | undefined {
  if (u.unifyDim(expected, found) === "mismatch") {
    return { kind: "dim", position, expected: u.resolve(expected), found: u.resolve(found) };
  }
  return undefined;
}

/** Numpy-style broadcasting of two shapes, aligned from the right. */
export function broadcastShapes(
  u: Unifier,
  a: TensorType,
  b: TensorType,
): { type: TensorType } | { conflict: ShapeConflict } {
  const ra = u.resolveTensor(a);
  const rb = u.resolveTensor(b);
  const n = Math.max(ra.dims.length, rb.dims.length);
  const dims: Dim[] = [];
  for (let i = 0; i < n; i++) {
    const da = ra.dims[ra.dims.length - n + i];
    const db = rb.dims[rb.dims.length - n + i];
    if (da === undefined) dims.push(db!);
    else if (db === undefined) dims.push(da);
    else if (isOne(da)) dims.push(db);
    else if (isOne(db)) dims.push(da);
    else if (u.unifyDim(da, db) === "mismatch") {
      return { conflict: { kind: "dim", position: i + 1, expected: da, found: db } };
    } else dims.push(u.resolve(da));
  }
  const out: TensorType = { dtype: ra.dtype, dims };
  if (ra.taskSet !== undefined) out.taskSet = ra.taskSet;
  const lead = ra.lead ?? rb.lead;
  if (lead !== undefined) {
    if (ra.lead !== undefined && rb.lead !== undefined && ra.lead !== rb.lead) {
      return { conflict: { kind: "rank" } };
    }
    // A fixed-rank operand longer than the other's known dims would need the lead to be empty.
    out.lead = lead;
  }
  return { type: out };
}

function isOne(d: Dim): boolean {
  return d.size === 1 && d.get("") === 1;
}

function hasVariable(d: Dim): boolean {
  for (const k of d.keys()) if (k.includes("?")) return true;
  return false;
}
