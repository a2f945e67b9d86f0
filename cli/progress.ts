/**
 * Progress on a terminal while kernels compile ("compiling kernels 7/23") or `moec tune`
 * measures ("tuning kernels 5/31"), drawn by ora on stderr. Nothing when stderr is not an
 * interactive terminal, in CI, or with --json; and nothing for work that ends within
 * SHOW_AFTER_MS (kernels already in the driver's cache).
 */
import type { Ora } from "ora";
import { stderrIsInteractive } from "./report.js";

const SHOW_AFTER_MS = 300;

export interface CounterProgress {
  /** `done` of `total` (for kernels: runtime/compile-kernels.ts's onProgress). */
  update: (done: number, total: number) => void;
  /** Clears the spinner (idempotent; call it on errors too). */
  stop: () => void;
}

/** A spinner for compiling kernels, or undefined where none is drawn. */
export function compileProgress(json: boolean | undefined): CounterProgress | undefined {
  return counterSpinner("compiling kernels", json);
}

/** A spinner saying "LABEL done/total", or undefined where none is drawn. */
export function counterSpinner(
  label: string,
  json: boolean | undefined,
): CounterProgress | undefined {
  if (json || !stderrIsInteractive()) return undefined;
  let spinner: Ora | undefined;
  let timer: NodeJS.Timeout | undefined;
  let text = "";
  const stop = () => {
    clearTimeout(timer);
    timer = undefined;
    spinner?.stop();
    spinner = undefined;
  };
  return {
    update(done, total) {
      if (done >= total) return stop();
      text = `${label} ${done}/${total}`;
      if (spinner) spinner.text = text;
      else
        timer ??= setTimeout(() => {
          // Loaded only when drawn: every moec command imports this file, few draw.
          void import("ora").then(({ default: ora }) => {
            if (timer === undefined) return; // stopped meanwhile
            spinner = ora({ text, stream: process.stderr, isEnabled: true, discardStdin: false });
            spinner.start();
          });
        }, SHOW_AFTER_MS);
    },
    stop,
  };
}
