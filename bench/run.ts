// `npm run bench`: every benchmark in one process, results side by side.
import { benchFrontend } from "./frontend.js";
import { benchMoec } from "./moec.js";
import { benchTrain } from "./train.js";

const sections: [string, () => string[] | Promise<string[]>][] = [
  ["Front end (issue #2)", benchFrontend],
  [
    "GPU: moec against TF.js WebGPU/wasm and onnxruntime-node, same process (issues #3, #4)",
    benchMoec,
  ],
  ["Training step: forward + backward + AdamW on the device (issue #13)", benchTrain],
];

for (const [title, run] of sections) {
  console.log(`== ${title}`);
  for (const line of await run()) console.log(line);
  console.log();
}
