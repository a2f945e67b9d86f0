// `npm run bench`: every benchmark in one process, results side by side.
import { benchFrontend } from "./frontend.js";

const sections: [string, () => string[] | Promise<string[]>][] = [
  ["Front end (issue #2)", benchFrontend],
];

for (const [title, run] of sections) {
  console.log(`== ${title}`);
  for (const line of await run()) console.log(line);
  console.log();
}
