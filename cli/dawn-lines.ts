/**
 * Dawn's native code prints two lines about the adapter's limits when an instance first
 * enumerates adapters ("Warning: maxDynamic…BuffersPerPipelineLayout artificially reduced…"),
 * straight to file descriptor 2. cli/launch.ts passes the CLI's stderr through this filter.
 */
const DAWN_LIMIT_LINE =
  /^Warning: maxDynamic(?:Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.\r?$/;
const DAWN_PREFIX = "Warning: maxDynamic";

/**
 * A filter for a stream's text: drops Dawn's limit lines and passes the rest on at once; only
 * a partial line that may still become one of them waits for its end.
 */
export function dawnLineFilter(write: (text: string) => void): {
  push: (text: string) => void;
  end: () => void;
} {
  let held = "";
  return {
    push(text) {
      const lines = (held + text).split("\n");
      held = lines.pop()!;
      const out = lines.filter((l) => !DAWN_LIMIT_LINE.test(l)).map((l) => `${l}\n`);
      const undecided = held.startsWith(DAWN_PREFIX) || DAWN_PREFIX.startsWith(held);
      if (!undecided || held === "") {
        out.push(held);
        held = "";
      }
      const joined = out.join("");
      if (joined) write(joined);
    },
    end() {
      if (held) write(held);
      held = "";
    },
  };
}
