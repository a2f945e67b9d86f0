/**
 * Prints every peer's numbers (the default peer suite), with progress on stderr:
 *   npx tsx bench/peers/demo.ts [--ort-threads N] [peer ...]
 * Peers: onnxruntime-node, tfjs-wasm, tfjs-webgpu (default: all). Exits 1 when a peer failed
 * or produced a wrong result.
 */
import { ALL_PEERS, formatPeerSuite, runPeerSuite, type PeerName } from "./suite.js";

const args = process.argv.slice(2);
let ortThreads = 0;
const peers: PeerName[] = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === "--ort-threads") {
    ortThreads = Number(args[++i]);
    if (!Number.isInteger(ortThreads) || ortThreads < 0) {
      console.error("--ort-threads takes a whole number (0 = ORT's default)");
      process.exit(2);
    }
  } else if ((ALL_PEERS as readonly string[]).includes(a)) {
    peers.push(a as PeerName);
  } else {
    console.error(`unknown argument ${a}; peers: ${ALL_PEERS.join(", ")}`);
    process.exit(2);
  }
}
const t0 = performance.now();
const res = await runPeerSuite({
  peers: peers.length > 0 ? peers : ALL_PEERS,
  ort: { threads: ortThreads },
  log: (line) => console.error(`  .. ${line}`),
});
console.log(formatPeerSuite(res).join("\n"));
console.log(`\npeer suite: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
process.exitCode = res.failures.length > 0 || res.timings.some((t) => !t.check.ok) ? 1 : 0;
