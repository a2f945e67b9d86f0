#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ by `npm run build` (run by `npm ci` via `prepare`).
// dist/cli/launch.js runs device commands in a child whose stderr it filters (cli/launch.ts).
import "../dist/cli/launch.js";
