/** Small SVG and HTML helpers for `moec view`'s page: escaping, numbers, line charts. */
import type { Series } from "./metrics-data.js";

export function esc(s: string | number): string {
  return String(s)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

/** 1234567 → "1.23M", 1234 → "1,234". */
export function shortCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e5) return `${(n / 1e3).toFixed(1)}K`;
  return n.toLocaleString("en-US");
}

/** A number for labels: integers as they are, others to 4 significant digits. */
export function num(x: number): string {
  if (Number.isInteger(x)) return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return String(Number(x.toPrecision(4)));
}

export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
  "#7f7f7f",
  "#bcbd22",
];

/** A sequential fill for t in [0, 1]: pale yellow to dark red. */
export function heat(t: number): string {
  const x = Math.max(0, Math.min(1, t));
  const stops: [number, number, number][] = [
    [255, 255, 229],
    [254, 196, 79],
    [236, 112, 20],
    [153, 52, 4],
  ];
  const f = x * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(f));
  const u = f - i;
  const c = stops[i]!.map((a, j) => Math.round(a + (stops[i + 1]![j]! - a) * u));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** One line chart: every series against the step, with min/max axis labels and a legend. */
export function lineChart(title: string, series: readonly Series[]): string {
  const W = 560;
  const H = 200;
  const L = 56;
  const R = 12;
  const T = 12;
  const B = 28;
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) return "";
  let x0 = Math.min(...all.map((p) => p[0]));
  let x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => p[1]));
  let y1 = Math.max(...all.map((p) => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) {
    y0 -= Math.abs(y0) * 0.05 || 0.5;
    y1 += Math.abs(y1) * 0.05 || 0.5;
  }
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const lines = series.map((s, i) => {
    const color = PALETTE[i % PALETTE.length]!;
    const pts = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    // A series of one point (one evaluation) is a dot.
    const marks =
      s.points.length <= 40
        ? s.points
            .map(
              ([x, y]) =>
                `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${color}"><title>${esc(s.name)} step ${x}: ${num(y)}</title></circle>`,
            )
            .join("")
        : "";
    return `<polyline class="series" data-series="${esc(s.name)}" fill="none" stroke="${color}" stroke-width="1.5" points="${pts}"/>${marks}`;
  });
  const legend = series
    .map(
      (s, i) =>
        `<span class="legend-item"><i style="background:${PALETTE[i % PALETTE.length]}"></i>${esc(s.name)}</span>`,
    )
    .join("");
  return `<figure class="chart" data-title="${esc(title)}"><figcaption>${esc(title)}</figcaption>
<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(title)}">
<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" class="axis"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" class="axis"/>
<text x="${L - 4}" y="${T + 4}" text-anchor="end" class="tick">${esc(num(y1))}</text>
<text x="${L - 4}" y="${H - B}" text-anchor="end" class="tick">${esc(num(y0))}</text>
<text x="${L}" y="${H - B + 16}" class="tick">step ${esc(num(x0))}</text>
<text x="${W - R}" y="${H - B + 16}" text-anchor="end" class="tick">${esc(num(x1))}</text>
${lines.join("\n")}
</svg><div class="legend">${legend}</div></figure>`;
}
