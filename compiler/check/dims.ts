/**
 * Symbolic dimensions: integer polynomials over named atoms (`4*d`, `B*T`, `d + 16`).
 * Atoms are constructor parameters (`d`), free port dimensions (`B`), unification variables
 * (`?3`) and opaque quotients (`(d/heads)`) when a division is not exact symbolically.
 */

/** A polynomial: monomial key (atoms joined by `*`, sorted; `""` for the constant) → coefficient. */
export type Dim = ReadonlyMap<string, number>;

const ONE_KEY = "";

export function dimConst(n: number): Dim {
  return n === 0 ? new Map() : new Map([[ONE_KEY, n]]);
}

export function dimAtom(name: string): Dim {
  return new Map([[name, 1]]);
}

export function isVarAtom(atom: string): boolean {
  return atom.startsWith("?");
}

/** The constant value of a dim, or undefined when it still has atoms. */
export function dimValue(d: Dim): number | undefined {
  if (d.size === 0) return 0;
  if (d.size === 1 && d.has(ONE_KEY)) return d.get(ONE_KEY)!;
  return undefined;
}

function addInto(out: Map<string, number>, key: string, coef: number): void {
  const v = (out.get(key) ?? 0) + coef;
  if (v === 0) out.delete(key);
  else out.set(key, v);
}

export function dimAdd(a: Dim, b: Dim): Dim {
  const out = new Map(a);
  for (const [k, c] of b) addInto(out, k, c);
  return out;
}

export function dimScale(a: Dim, s: number): Dim {
  const out = new Map<string, number>();
  if (s === 0) return out;
  for (const [k, c] of a) out.set(k, c * s);
  return out;
}

export function dimSub(a: Dim, b: Dim): Dim {
  return dimAdd(a, dimScale(b, -1));
}

function mulKeys(a: string, b: string): string {
  if (a === ONE_KEY) return b;
  if (b === ONE_KEY) return a;
  return [...a.split("*"), ...b.split("*")].sort().join("*");
}

export function dimMul(a: Dim, b: Dim): Dim {
  const out = new Map<string, number>();
  for (const [ka, ca] of a) for (const [kb, cb] of b) addInto(out, mulKeys(ka, kb), ca * cb);
  return out;
}

/**
 * Exact division when it can be shown symbolically (`(4*d)/4 = d`, `(B*T)/T = B`); otherwise an
 * opaque atom `(a/b)`, whose exactness is checked once values are known.
 */
export function dimDiv(a: Dim, b: Dim): { dim: Dim; exact: boolean | undefined } {
  const av = dimValue(a);
  const bv = dimValue(b);
  if (bv !== undefined) {
    if (bv === 0) return { dim: a, exact: false };
    if (av !== undefined) return { dim: dimConst(Math.trunc(av / bv)), exact: av % bv === 0 };
    if ([...a.values()].every((c) => c % bv === 0))
      return { dim: dimScale(a, 1 / bv), exact: true };
  }
  if (b.size === 1) {
    const [[bk, bc]] = [...b.entries()] as [[string, number]];
    if (bk !== ONE_KEY) {
      const out = new Map<string, number>();
      let ok = true;
      for (const [k, c] of a) {
        const parts = k === ONE_KEY ? [] : k.split("*");
        const i = parts.indexOf(bk);
        if (i < 0 || c % bc !== 0) {
          ok = false;
          break;
        }
        parts.splice(i, 1);
        out.set(parts.join("*"), c / bc);
      }
      if (ok) return { dim: out, exact: true };
    }
  }
  return { dim: dimAtom(`(${formatDim(a, true)}/${formatDim(b, true)})`), exact: undefined };
}

export function dimEquals(a: Dim, b: Dim): boolean {
  if (a.size !== b.size) return false;
  for (const [k, c] of a) if (b.get(k) !== c) return false;
  return true;
}

/** All atoms the dim mentions. */
export function dimAtoms(d: Dim): string[] {
  const out = new Set<string>();
  for (const k of d.keys()) if (k !== ONE_KEY) for (const a of k.split("*")) out.add(a);
  return [...out];
}

/** Replaces atoms by dims (substitution of parameters or solved variables). */
export function dimSubstitute(d: Dim, lookup: (atom: string) => Dim | undefined): Dim {
  let changed = false;
  for (const k of d.keys()) {
    if (k === ONE_KEY) continue;
    if (!k.includes("*")) {
      if (lookup(k) !== undefined) changed = true;
    } else for (const a of k.split("*")) if (lookup(a) !== undefined) changed = true;
    if (changed) break;
  }
  if (!changed) return d;
  let out: Dim = new Map();
  for (const [k, c] of d) {
    let term: Dim = dimConst(c);
    if (k !== ONE_KEY) for (const a of k.split("*")) term = dimMul(term, lookup(a) ?? dimAtom(a));
    out = dimAdd(out, term);
  }
  return out;
}

/** `4*d + 16`, `B*T`; with `compact`, no spaces (for nesting inside atom names). */
export function formatDim(d: Dim, compact = false): string {
  if (d.size === 0) return "0";
  const terms = [...d.entries()].sort(([ka], [kb]) => {
    if (ka === ONE_KEY) return 1;
    if (kb === ONE_KEY) return -1;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
  const sep = compact ? "" : " ";
  let out = "";
  terms.forEach(([k, c], i) => {
    const neg = c < 0;
    const abs = Math.abs(c);
    const key = k === ONE_KEY ? "" : k.split("*").map(displayAtom).join("*");
    const body = k === ONE_KEY ? String(abs) : abs === 1 ? key : `${abs}*${key}`;
    if (i === 0) out = neg ? `-${body}` : body;
    else out += `${sep}${neg ? "-" : "+"}${sep}${body}`;
  });
  return out;
}

/**
 * How an atom reads in messages: unification variables and per-instance copies of a
 * component's free dims (`?B#12`) print as the name the user wrote (`B`).
 */
export function displayAtom(atom: string): string {
  return atom.replace(/^\?/, "").replace(/#v?\d+$/, "");
}
