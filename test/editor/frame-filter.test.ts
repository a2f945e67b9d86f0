// The language server's input guard: well-formed frames pass unchanged whatever the chunking;
// anything else is dropped up to the next header, one report per bad run or frame.
import { describe, expect, it } from "vitest";
import { FrameFilter } from "../../editor/lsp/frame-filter.js";

const frame = (o: object, extraHeader = "") => {
  const b = Buffer.from(JSON.stringify(o));
  return `${extraHeader}Content-Length: ${b.length}\r\n\r\n${b}`;
};

/** What the filter passes on and reports for `input` written in `chunkSize`-byte pieces. */
async function filter(input: string, chunkSize = input.length) {
  const reports: string[] = [];
  const f = new FrameFilter((line) => reports.push(line));
  let out = "";
  f.on("data", (d: Buffer) => (out += d.toString("utf8")));
  const bytes = Buffer.from(input);
  for (let i = 0; i < bytes.length; i += chunkSize) f.write(bytes.subarray(i, i + chunkSize));
  await new Promise<void>((resolve) => f.end(resolve));
  return { out, reports };
}

describe("FrameFilter", () => {
  const good = [
    frame({ id: 1, text: "ünïcode and Content-Length: inside a string" }),
    frame({ id: 2 }, "Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"),
    frame({ id: 3, big: "x".repeat(100_000) }),
  ].join("");

  for (const chunk of [1, 7, 64, 65536]) {
    it(`passes well-formed frames unchanged in ${chunk}-byte chunks`, async () => {
      const { out, reports } = await filter(good, chunk);
      expect(out).toBe(good);
      expect(reports).toEqual([]);
    });
  }

  it("drops garbage between frames, and reports each run once", async () => {
    const a = frame({ id: 1 });
    const b = frame({ id: 2 });
    for (const chunk of [1, 5, 1000]) {
      const { out, reports } = await filter(`\r\n${a}${" ".repeat(44)}${b}`, chunk);
      expect(out).toBe(a + b);
      expect(reports).toEqual([
        'dropped 2 bytes of input before a header: "\\r\\n"',
        `dropped 44 bytes of input before a header: "${" ".repeat(40)}"…`,
      ]);
    }
  });

  it("drops a frame whose Content-Length runs past its body, keeps the next", async () => {
    const next = frame({ id: 2 });
    const { out, reports } = await filter(`Content-Length: 5000\r\n\r\n{"id":1}${next}`);
    expect(out).toBe(next);
    expect(reports[0]).toMatch(/Content-Length 5000 runs past its 8-byte body/);
  });

  it("drops a frame that is too short or not JSON, and one over the size limit", async () => {
    const next = frame({ id: 2 });
    const short = await filter(`Content-Length: 3\r\n\r\n{"id":1}${next}`);
    expect(short.out).toBe(next);
    const huge = await filter(`Content-Length: 99999999999\r\n\r\n{}${next}`);
    expect(huge.out).toBe(next);
    expect(huge.reports[0]).toMatch(/over the \d+-byte limit/);
    const malformed = await filter(`Content-Length: ten\r\n\r\n{}${next}`);
    expect(malformed.out).toBe(next);
  });
});
