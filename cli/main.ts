/**
 * The `moec` command line. Exit codes: 0 success, 1 a problem in the user's input,
 * 2 wrong usage, 3 device or runtime failure. Errors are one line; --verbose adds the stack.
 */
import { Argument, Command, CommanderError, Option } from "commander";
import { runCheck } from "./check-command.js";
import { type CompileOptions, runCompile } from "./compile-command.js";
import { SHELLS, type Shell, completionScript } from "./completion-command.js";
import type { DataGenOptions } from "./data-command.js";
import { type ExportOptions, MOEC_VERSION } from "./export-format.js";
import { collect } from "./model-options.js";
import { type RunOptions, runRun } from "./run-command.js";
import { type ParamsOptions, runParams } from "./params-command.js";
import type { TrainOptions } from "./train-command.js";
import type { ViewOptions } from "./view-command.js";
import {
  CliError,
  EXIT_DEVICE,
  EXIT_USAGE,
  EXIT_USER_ERROR,
  displayPath,
  errorJson,
  fsProblem,
} from "./report.js";

/**
 * Options that change how a model is built, shared by compile, run and export: defined once
 * here (a fresh Option per command, as commander keeps parsed state on it).
 */
const mergeAdaptersOption = () =>
  new Option(
    "--merge-adapters",
    "merge LoRA adapters on Linear layers into the base weights (computed once per weights)",
  );
const pinGroupsOption = () =>
  new Option(
    "--pin-groups <layer=w1,w2,...>",
    "fix the group weights of a Grouped MoE layer, e.g. blocks.2=0.7,0.3,0 (repeatable)",
  ).argParser(collect);

const program = new Command();
program
  .name("moec")
  .description("Compiler for mixture-of-experts and adapter models written in the moe language")
  .version(MOEC_VERSION)
  .option("--verbose", "show stack traces for internal errors")
  .showHelpAfterError("(run with --help for usage)")
  .exitOverride();

program
  .command("check")
  .description("parse, resolve and check .moe files; exit 0 when clean, 1 on errors")
  .argument("<files...>", ".moe files")
  .option("--json", "machine-readable diagnostics")
  .action((files: string[], opts: { json?: boolean }) => {
    process.exitCode = runCheck(files, opts);
  });

program
  .command("params")
  .description(
    "list every parameter of a model with totals, active parameters per token and per-task cost",
  )
  .argument("<file>", ".moe file")
  .option("--model <name>", "the model to instantiate (default: the last model in the file)")
  .option(
    "--program [name]",
    "a train program's parameters instead (default: the file's first), frozen instances frozen",
  )
  .addOption(
    new Option("--set <name=value>", "override a model parameter (repeatable)").argParser(
      (v: string, prev: string[] = []) => [...prev, v],
    ),
  )
  .option(
    "--depth <n>",
    "a summary tree of the parameter paths to depth n (the default above 100 tensors, at depth 3)",
  )
  .option("--flat", "every tensor, also for a large model")
  .option("--json", "machine-readable report")
  .action((file: string, opts: ParamsOptions) => {
    process.exitCode = runParams(file, opts);
  });

program
  .command("view")
  .description(
    "write one self-contained HTML page: the model's diagram, its routing from a run's files, training curves",
  )
  .argument("<file>", ".moe file")
  .option("--model <name>", "the model to draw (default: the last model in the file)")
  .option("--set <name=value>", "override a model parameter (repeatable)", collect)
  .option(
    "--dim <name=size>",
    "size of a free input dimension, shown in shapes (repeatable)",
    collect,
  )
  .option("--stats <file>", "routing statistics: the JSON `moec run --stats --json` prints")
  .option(
    "--trace-routing <file>",
    "per-token routing: the safetensors `moec run --trace-routing` writes",
  )
  .option("--metrics <file>", "training curves from a run's metrics.jsonl")
  .option("-o, --output <file>", "the HTML file to write (default: <model>.html)")
  .option("--links <kind>", "source links: vscode (default, vscode://file/...) or file")
  .option("--open", "open the page with xdg-open when there is one")
  .action(async (file: string, opts: ViewOptions) => {
    // Loaded lazily: only this command needs the page builder.
    const { runView } = await import("./view-command.js");
    process.exitCode = runView(file, opts);
  });

program
  .command("fmt")
  .description("format .moe files in place; --check lists the files that would change (exit 1)")
  .argument("[files...]", ".moe files")
  .option("--check", "write nothing; list unformatted files and exit 1 if there are any")
  .option("--stdin", "format standard input to standard output (FILE names it in messages)")
  .action(async (files: string[], opts: { check?: boolean; stdin?: boolean }) => {
    // Loaded lazily: only this command needs Prettier's printer.
    const { runFmt } = await import("./fmt-command.js");
    process.exitCode = runFmt(files, opts);
  });

program
  .command("compile")
  .description(
    "lower a model at fixed sizes and write a bundle: manifest.json, ir.json, plan.json, kernels/*.wgsl",
  )
  .argument("<file>", ".moe file")
  .option("--model <name>", "the model to compile (default: the last model in the file)")
  .option(
    "--program [name]",
    "compile a train program instead (default: the file's first): its forward passes and losses, with --emit ir",
  )
  .option("-o, --output <dir>", "bundle directory (default: <model>.moec)")
  .option(
    "--dim <name=size>",
    "size of a free input dimension, e.g. --dim T=128 (repeatable)",
    collect,
  )
  .option("--set <name=value>", "override a model parameter (repeatable)", collect)
  .option("--emit <stage>", "print one stage instead: ast, ir, wgsl or plan")
  .addOption(mergeAdaptersOption())
  .action((file: string, opts: CompileOptions) => {
    process.exitCode = runCompile(file, opts);
  });

program
  .command("run")
  .description("run a model (.moe file or compiled bundle) on the WebGPU device")
  .argument("<target>", ".moe file or bundle directory")
  .option("--model <name>", "the model to run (default: the last model in the file)")
  .option("--weights <file>", "parameters from a safetensors file (default: seeded initialisation)")
  .option(
    "--weights-map <name>",
    "read --weights in another layout: hf-gpt2 (Hugging Face GPT-2), hf-mixtral (Mixtral)",
  )
  .option(
    "--adapter <[task=]dir>",
    "load a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) over --weights; TASK=DIR for a task's `per task` LoRAs (repeatable)",
    collect,
  )
  .option(
    "--init-missing",
    "initialise parameters the weights file lacks (new adapters on a pretrained model)",
  )
  .option("--inputs <file>", "inputs from a safetensors file (default: seeded random inputs)")
  .option("--allow-nonfinite", "load weights, adapters and inputs that hold NaN or infinities")
  .option(
    "--dim <name=size>",
    "size of a free input dimension, e.g. --dim T=16 (repeatable)",
    collect,
  )
  .option("--set <name=value>", "override a model parameter (repeatable)", collect)
  .option("--task <name>", "run every example as this task")
  .option("--seed <n>", "seed for initialisation and random inputs", "0")
  .option("-o, --output <file>", "write the outputs to a safetensors file")
  .option(
    "--stats",
    "time every kernel, and report each MoE layer's routing (tokens per expert, dropped, losses, entropy, group weights)",
  )
  .addOption(mergeAdaptersOption())
  .addOption(pinGroupsOption())
  .option(
    "--trace-routing <file>",
    "write each token's experts and weights per MoE layer to a safetensors file",
  )
  .option("--tune", "tune the kernels for this adapter first if it was never tuned (see moec tune)")
  .option("--backend <name>", "gpu (default) or reference (the float64 CPU interpreter)")
  .option("--json", "machine-readable summary")
  .action(async (target: string, opts: RunOptions) => {
    process.exitCode = await runRun(target, opts);
  });

program
  .command("export")
  .description("export a model for PyTorch (a Python module) or ONNX Runtime (an .onnx graph)")
  .argument("<file>", ".moe file")
  .option("--format <name>", "torch or onnx")
  .option("--model <name>", "the model to export (default: the last model in the file)")
  .option("-o, --output <file>", "the file to write (default: <model>.py or <model>.onnx)")
  .option("--set <name=value>", "override a model parameter (repeatable)", collect)
  .option("--dim <name=size>", "onnx: size of a free dimension (default: kept symbolic)", collect)
  .option("--weights <file>", "onnx: parameters from a safetensors file (default: seeded as run)")
  .option("--weights-map <name>", "onnx: read --weights through a weight map (as moec run)")
  .option(
    "--adapter <[task=]dir>",
    "onnx: a PEFT LoRA adapter on top of --weights, TASK=DIR per task (as moec run)",
    collect,
  )
  .option("--init-missing", "onnx: initialise parameters --weights lacks (as moec run)")
  .option("--allow-nonfinite", "onnx: load weights that hold NaN or infinities")
  .option("--seed <n>", "onnx: seed of the initialisation when no --weights is given", "0")
  .addOption(mergeAdaptersOption())
  .addOption(pinGroupsOption())
  .action(async (file: string, opts: ExportOptions) => {
    const { runExport } = await import("./export-command.js");
    process.exitCode = await runExport(file, opts);
  });

program
  .command("train")
  .description(
    "train a `train` program on the WebGPU device: checkpoints and metrics in a run directory",
  )
  .argument("<file>", ".moe file")
  .option("--program <name>", "the training program (default: the file's first)")
  .option("--data <file>", "training data: a safetensors file with one tensor per input port")
  .option(
    "--eval-data <file>",
    "held-out data (same tensors as --data): its mean loss at every checkpoint, in metrics.jsonl",
  )
  .option("--steps <n>", "optimizer steps (the schedule's length)", "100")
  .option("--batch <n>", "examples per step (the inputs' leading dimension)", "32")
  .option("--seed <n>", "seed of the initialisation and the data order", "0")
  .option("--out <dir>", "run directory (default: runs/<program>)")
  .option("--save-every <n>", "write a checkpoint every N steps (and always at the end)")
  .option(
    "--eval-every <n>",
    "also evaluate --eval-data every N steps (it runs at each checkpoint)",
  )
  .option("--keep <n>", "checkpoints to keep, newest first", "3")
  .option(
    "--resume [dir]",
    "continue the run in --out (or DIR) from its newest complete checkpoint",
  )
  .option(
    "--weights <[prefix=]file>",
    "start from a checkpoint; with PREFIX, for the instance bound to it (large=teacher.safetensors; repeatable)",
    collect,
  )
  .option("--warmup <n>", "linear learning-rate warmup over the first N steps", "0")
  .option("--schedule <name>", "learning rate after warmup: constant, cosine or linear", "constant")
  .option("--dim <name=size>", "size of a free dimension the data does not give", collect)
  .option("--allow-nonfinite", "load weights and data that hold NaN or infinities")
  .option("--set <name=value>", "override a program parameter (repeatable)", collect)
  .option("--json", "progress and summary as JSON lines on stdout")
  .action(async (file: string, opts: TrainOptions) => {
    // Loaded lazily: only this command needs the training runtime.
    const { runTrain } = await import("./train-command.js");
    process.exitCode = await runTrain(file, opts);
  });

const data = program.command("data").description("synthetic multi-task data sets for moec train");
data
  .command("gen")
  .description("write a seeded synthetic data set as safetensors (--list shows the sets)")
  .argument("[name]", "the data set: symbols, sequences, related or nli")
  .option("-o, --output <file>", "the safetensors file to write")
  .option("--list", "list the data sets and their options")
  .option("--seed <n>", "seed of the rules (maps, ciphers, labelling) and the samples", "0")
  .option("--count <n>", "number of examples")
  .option("--tasks <n|list>", "number of tasks (symbols, related) or task names (sequences)")
  .option("--symbols <n>", "symbols: alphabet size")
  .option("--all-pairs", "symbols: every (symbol, task) pair once, for evaluation")
  .option("--vocab <n>", "sequences, nli: number of symbols")
  .option("--length <n>", "sequences, nli: input length; related: positions per example")
  .option("--classes <n>", "related: classes per task")
  .option("--features <n>", "related: input features")
  .option("--relatedness <r>", "related: 0 unrelated tasks … 1 one shared rule")
  .option("--noise <p>", "related: fraction of labels replaced by a random class")
  .option("--sample-seed <n>", "related: seed of the samples alone (same rules, new examples)")
  .option("--json", "machine-readable summary")
  .action(async (name: string | undefined, opts: DataGenOptions & { list?: boolean }) => {
    const { listDataSets, runDataGen } = await import("./data-command.js");
    if (opts.list || name === undefined) {
      process.stdout.write(listDataSets() + "\n");
      process.exitCode = name === undefined && !opts.list ? EXIT_USAGE : 0;
      return;
    }
    process.exitCode = runDataGen(name, opts);
  });

program
  .command("tune")
  .description("measure the matmul kernel variants on this adapter and cache the fastest")
  .option("--force", "measure again even if this adapter was tuned")
  .option("--json", "machine-readable result")
  .action(async (opts: { force?: boolean; json?: boolean }) => {
    // Loaded lazily: only device commands touch the GPU.
    const { runTune } = await import("./tune-command.js");
    process.exitCode = await runTune(opts);
  });

program
  .command("doctor")
  .description(
    "show the WebGPU adapter moec runs on, its limits, and whether it is a software driver",
  )
  .option("--json", "machine-readable report")
  .action(async (opts: { json?: boolean }) => {
    // Loaded lazily: only this command touches the device.
    const { runDoctor } = await import("./doctor.js");
    process.exitCode = await runDoctor({ json: opts.json === true });
  });

program
  .command("lsp")
  .description("run the language server (editor/lsp) over stdin/stdout")
  .option("--stdio", "talk the Language Server Protocol over stdin/stdout (the only transport)")
  .allowUnknownOption() // clients append their own flags (--clientProcessId=...)
  .action(async () => {
    // Loaded lazily: the other commands do not need the protocol libraries.
    const { startServer } = await import("../editor/lsp/server.js");
    startServer();
  });

program
  .command("completion")
  .description("print a shell completion script for bash, zsh or fish (see its first lines)")
  .addArgument(new Argument("<shell>", "the shell").choices(SHELLS))
  .action((shell: Shell) => {
    process.stdout.write(completionScript(program, shell));
  });

async function main(argv: string[]): Promise<void> {
  const verbose = argv.includes("--verbose");
  const json = argv.includes("--json");
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version end with code 0; everything else commander rejects is usage.
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
      if (json && err.exitCode !== 0) process.stdout.write(errorJson(err.message, EXIT_USAGE));
      return;
    }
    if (err instanceof CliError) {
      process.stderr.write(`moec: ${err.message}\n`);
      if (verbose) process.stderr.write(`${err.stack}\n`);
      if (json) process.stdout.write(errorJson(err.message, err.exitCode));
      process.exitCode = err.exitCode;
      return;
    }
    // A file-system failure on a path (an output folder that does not exist, a file that
    // cannot be read) is about a path the user gave: theirs to fix (exit 1), not moec's bug.
    const problem = fsProblem(err);
    const where = (err as { path?: unknown }).path;
    if (problem && typeof where === "string") {
      // An atomic write's temporary (`.NAME.PID.ID.tmp`) is shown as the file it was for.
      const target = where.replace(/(^|[/\\])\.([^/\\]+)\.\d+\.[0-9a-f]+\.tmp$/, "$1$2");
      process.stderr.write(`moec: ${displayPath(target)}: ${problem}\n`);
      if (verbose && err instanceof Error) process.stderr.write(`${err.stack}\n`);
      if (json)
        process.stdout.write(errorJson(`${displayPath(target)}: ${problem}`, EXIT_USER_ERROR));
      process.exitCode = EXIT_USER_ERROR;
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`moec: internal error: ${message}\n`);
    if (verbose && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    else process.stderr.write("(run with --verbose for the stack trace, and please report it)\n");
    process.exitCode = EXIT_DEVICE;
  }
}

await main(process.argv);
