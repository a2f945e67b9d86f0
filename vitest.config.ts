import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // GPU tests need one Dawn device per process; forks keeps each test file in its own process.
    pool: "forks",
    testTimeout: 60_000,
  },
});
