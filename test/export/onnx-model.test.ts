// The ONNX file itself: its header, ports, symbolic dims, sparse routing ops, external data,
// the weight options of `moec run`, and the errors (an op with no mapping, a dim that cannot
// stay symbolic), each before anything is written.
import * as fs from "node:fs";
import * as path from "node:path";
import onnxProto from "onnx-proto";
import { describe, expect, it } from "vitest";
import { IrBuilder } from "../../compiler/ir/builder.js";
import { ONNX_OPSET, UnmappableOpError, buildOnnxModel } from "../../compiler/export/onnx-model.js";
import { SymbolicSizes } from "../../compiler/export/onnx-dims.js";
import { CliError } from "../../cli/report.js";
import { prepareWeights } from "../../runtime/run-model.js";
import { weightsToSafetensors } from "../../runtime/weights.js";
import { writeSafetensorsFile } from "../../runtime/safetensors.js";
import { peftAdapterFiles } from "../../runtime/peft.js";
import { writeFileAtomic } from "../../runtime/atomic-write.js";
import { lowerFromSource } from "../../cli/model-options.js";
import { compareAt, exportTo, scratchDir, session, writeModel } from "./onnx-harness.js";

const { onnx } = onnxProto;
const root = path.join(import.meta.dirname, "../..");
const tiny = path.join(root, "examples/tiny-transformer.moe");
const dir = scratchDir();

const decode = (bytes: Uint8Array) => onnx.ModelProto.decode(bytes);
/** The decoded graph (protobufjs types every field optional; decoded messages have them all). */
const graphOf = (bytes: Uint8Array) => decode(bytes).graph as onnxProto.onnx.GraphProto;
const dimsOf = (v: onnxProto.onnx.IValueInfoProto) =>
  v.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue));

describe("the exported file", () => {
  it("has the header, opset 20, ports by name with symbolic dims, parameters by path", () => {
    const e = exportTo(tiny, path.join(dir, "tiny.onnx"));
    const m = decode(e.modelBytes);
    expect(m.producerName).toBe("moec");
    expect(m.producerVersion).toBe("test");
    expect(m.docString).toContain("TinyTransformer");
    expect(m.docString).toContain(tiny);
    const meta = Object.fromEntries(m.metadataProps.map((p) => [p.key, p.value]));
    expect(meta).toMatchObject({
      source: tiny,
      model: "TinyTransformer",
      moec_version: "test",
      symbolic_dims: "B,T",
    });
    expect(m.opsetImport.map((o) => [o.domain, Number(o.version)])).toEqual([["", ONNX_OPSET]]);
    expect(ONNX_OPSET).toBeGreaterThanOrEqual(17);
    const g = graphOf(e.modelBytes);
    expect(g.input.map((i) => [i.name, dimsOf(i)])).toEqual([["x", ["B", "T", 16]]]);
    expect(g.output.map((o) => [o.name, dimsOf(o)])).toEqual([["logits", ["B", "T", 10]]]);
    const params = prepareWeights(
      lowerFromSource(tiny, { dim: ["B=1", "T=1"] }).lowered.graph,
      undefined,
      0,
    );
    expect(
      g.initializer
        .map((t) => t.name)
        .filter((n) => params.has(n!))
        .sort(),
    ).toEqual([...params.keys()].sort());
    expect(e.files).toHaveLength(1);
  });

  it("--dim fixes a dim: the input has that size, the other stays symbolic", () => {
    const e = exportTo(tiny, path.join(dir, "tiny.onnx"), { dim: ["T=6"] });
    expect(e.symbolic).toEqual(["B"]);
    expect(dimsOf(graphOf(e.modelBytes).input[0]!)).toEqual(["B", 6, 16]);
  });

  it("routes sparsely: TopK, per-expert NonZero and Gather, ScatterElements (add)", async () => {
    const mixtral = path.join(root, "examples/mixtral.moe");
    const e = exportTo(mixtral, path.join(dir, "mixtral.onnx"));
    // One token leaves most experts without rows; 17 positions pass every probe size.
    const s = await session(e.modelBytes);
    for (const dims of [
      { B: 1, T: 1 },
      { B: 2, T: 17 },
    ])
      expect((await compareAt(mixtral, e, s, dims)).logits).toBeLessThan(1e-5);
    await s.release();
    const nodes = graphOf(e.modelBytes).node as onnxProto.onnx.NodeProto[];
    const ops = new Set(nodes.map((n) => n.opType));
    for (const op of ["TopK", "NonZero", "Gather", "ScatterElements", "MatMul"])
      expect(ops, op).toContain(op);
    const scatters = nodes.filter((n) => n.opType === "ScatterElements");
    for (const s of scatters) {
      const reduction = s.attribute.find((a) => a.name === "reduction")!;
      expect(new TextDecoder().decode(reduction.s!)).toBe("add");
    }
  });

  it("puts the weights in a data file beside the model past the threshold, and runs from it", async () => {
    const out = path.join(dir, "ext", "tiny.onnx");
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const e = exportTo(tiny, out, {}, 1000);
    expect(e.files.map((f) => path.basename(f.path))).toEqual(["tiny.onnx", "tiny.onnx.data"]);
    for (const f of e.files) writeFileAtomic(f.path, f.data);
    const external = (graphOf(e.modelBytes).initializer as onnxProto.onnx.TensorProto[]).filter(
      (t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL,
    );
    expect(external.length).toBeGreaterThan(10);
    for (const t of external) {
      expect(t.rawData.length).toBe(0);
      expect(t.externalData.find((kv) => kv.key === "location")!.value).toBe("tiny.onnx.data");
    }
    // The model file is small; the data file holds the weights.
    expect(fs.statSync(out).size).toBeLessThan(40_000);
    expect(fs.statSync(`${out}.data`).size).toBeGreaterThan(60_000);
    const s = await session(out);
    const errors = await compareAt(tiny, e, s, { B: 2, T: 3 });
    expect(errors.logits).toBeLessThan(1e-5);
    await s.release();
    // Under the threshold: one file, the same model.
    expect(exportTo(tiny, out).files).toHaveLength(1);
  });

  it("takes the weights of --weights (as moec run does)", async () => {
    const { lowered } = lowerFromSource(tiny, { dim: ["B=1", "T=1"] });
    const weights = prepareWeights(lowered.graph, undefined, 11);
    const file = path.join(dir, "w.safetensors");
    writeSafetensorsFile(file, weightsToSafetensors(weights));
    const e = exportTo(tiny, path.join(dir, "w.onnx"), { weights: file });
    for (const [name, t] of weights)
      expect([...e.weights.get(name)!.data], name).toEqual([...t.data]);
    const seeded = exportTo(tiny, path.join(dir, "w.onnx"), { seed: "11" });
    expect([...seeded.weights.get("proj.weight")!.data]).toEqual([
      ...weights.get("proj.weight")!.data,
    ]);
    const other = exportTo(tiny, path.join(dir, "w.onnx"));
    expect([...other.weights.get("proj.weight")!.data]).not.toEqual([
      ...weights.get("proj.weight")!.data,
    ]);
    const s = await session(e.modelBytes);
    expect((await compareAt(tiny, e, s, { B: 1, T: 4 })).logits).toBeLessThan(1e-5);
    await s.release();
  });
  it("takes a PEFT adapter on top of --weights (as moec run does)", async () => {
    const file = writeModel(
      dir,
      "lora",
      `import std.nn { Linear }
import std.adapt { LoRA }
model M() { in x: f32[N, 4]  out y: f32[N, 3]
  q = Linear(4, 4) with LoRA(r: 2, alpha: 4.0)
  k = Linear(4, 3) with LoRA(r: 2)
  y = k(q(x)) }`,
    );
    const { lowered } = lowerFromSource(file, { dim: ["N=2"] });
    const all = prepareWeights(lowered.graph, undefined, 5, { missing: "init" });
    // LoRA B starts at zero: give the adapter values that change the output.
    const lora = new Map(
      [...all]
        .filter(([n]) => n.includes(".lora_"))
        .map(([n, t]) => [
          `net.${n}`,
          { shape: t.shape, data: Float32Array.from(t.data, (_, i) => 0.1 * ((i % 5) - 2)) },
        ]),
    );
    const adapterDir = path.join(dir, "ckpt");
    const adapterFiles = peftAdapterFiles(
      lora,
      lowered.loras.map((l) => ({ ...l, path: `net.${l.path}` })),
    );
    for (const [name, data] of adapterFiles) {
      fs.mkdirSync(path.dirname(path.join(adapterDir, name)), { recursive: true });
      fs.writeFileSync(path.join(adapterDir, name), data);
    }
    const base = path.join(dir, "base.safetensors");
    writeSafetensorsFile(
      base,
      weightsToSafetensors(new Map([...all].filter(([n]) => !n.includes(".lora_")))),
    );
    const options = { weights: base, adapter: [path.join(adapterDir, "adapter")] };
    const e = exportTo(file, path.join(dir, "lora.onnx"), options);
    expect([...e.weights.get("q.lora_B.weight")!.data]).toEqual([
      ...lora.get("net.q.lora_B.weight")!.data,
    ]);
    const s = await session(e.modelBytes);
    for (const N of [3, 6]) expect((await compareAt(file, e, s, { N })).y).toBeLessThan(1e-5);
    await s.release();
  });
});

describe("errors", () => {
  it("an op with no mapping is one line naming it", () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 3]);
    const key = b.input("key", "f32", [1]);
    b.output("y", b.binary("add", x, b.random(key, [2, 3], 1)));
    const build = () =>
      buildOnnxModel({
        name: "M",
        sizes: new SymbolicSizes(b.finish()),
        weights: new Map(),
        header: { opset: ONNX_OPSET },
      });
    expect(build).toThrow(UnmappableOpError);
    expect(build).toThrow(/^the IR op `random` has no ONNX mapping \([^\n]*\)$/);
  });

  it("a dim padded to whole groups cannot stay symbolic: an error naming it, asking for --dim", () => {
    const file = writeModel(
      dir,
      "mot",
      `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, 4]  out y: f32[B, T, 4]
  moe = MoE(router: TokenMix(group: 2), experts: [FFN(4, 3); 3])
  y = moe(x) }`,
    );
    const run = () => exportTo(file, path.join(dir, "mot.onnx"));
    expect(run).toThrow(CliError);
    expect(run).toThrow(
      /^`B` cannot stay a symbolic ONNX dimension \(.*\); fix it with --dim B=SIZE$/,
    );
    expect(exportTo(file, path.join(dir, "mot.onnx"), { dim: ["B=3"] }).symbolic).toEqual(["T"]);
  });

  it("a --dim the model does not have is a usage error", () => {
    expect(() => exportTo(tiny, path.join(dir, "x.onnx"), { dim: ["Q=3"] })).toThrow(
      /--dim Q: model TinyTransformer has no free dimension `Q`/,
    );
  });
});
