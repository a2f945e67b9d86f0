// `npm run bench`: every benchmark in one process, results side by side.
import { benchColdStart } from "./cold-start.js";
import { benchFrontend } from "./frontend.js";
import { benchMoec } from "./moec.js";
import { benchTrain } from "./train.js";

const sections: [string, () => string[] | Promise<string[]>][] = [
  ["Front end (issue #2)", benchFrontend],
  ["First run with an empty shader cache (issue #16)", benchColdStart],
  [
    "GPU: moec against TF.js WebGPU/wasm and onnxruntime-node, same process (issues #3, #4)",
    benchMoec,
  ],
  ["Training step: forward + backward + AdamW on the device (issue #13)", benchTrain],
];

// `npm run bench -- shader training` runs only the sections whose titles name those words.
const only = process.argv.slice(2).map((w) => w.toLowerCase());
for (const [title, run] of sections) {
  if (only.length > 0 && !only.some((w) => title.toLowerCase().includes(w))) continue;
  console.log(`== ${title}`);
  for (const line of await run()) console.log(line);
  console.log();
}
