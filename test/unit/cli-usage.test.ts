/** The --help text documents every flag the parser knows, one line each. */
import { describe, expect, test } from "bun:test";
import { KNOWN_FLAGS, REJECTED_FLAGS, parseVmArgs } from "../../src/cli/args.ts";
import { VM_USAGE, vmUsage } from "../../src/cli/usage.ts";

const lines = VM_USAGE.split("\n");

describe("usage text", () => {
  test("every accepted flag has a line of its own", () => {
    for (const flag of KNOWN_FLAGS) {
      const re = new RegExp(`^  ${flag.replace(/[-]/g, "\\-")}(\\s|,|$)`);
      expect({ flag, documented: lines.some((l) => re.test(l)) }).toEqual({ flag, documented: true });
    }
  });

  test("every rejected flag is listed as not supported", () => {
    const tail = VM_USAGE.slice(VM_USAGE.indexOf("Not supported"));
    for (const flag of REJECTED_FLAGS) expect(tail).toMatch(new RegExp(`${flag}[,.]`));
  });

  test("the documented flags are exactly the parser's", () => {
    const documented = new Set(
      lines.map((l) => /^  (-[a-z-]+|-[A-Z])\b/i.exec(l)?.[1]).filter((f): f is string => !!f && f !== "-h"),
    );
    documented.delete("-version");
    expect([...documented].sort()).toEqual([...KNOWN_FLAGS].sort());
  });

  test("the examples in it parse", () => {
    const cfg = parseVmArgs([
      "-machine", "q35", "-m", "512M", "-smp", "2", "-kernel", "vmlinux",
      "-drive", "file=disk.img,id=d0",
      "-device", "virtio-blk-pci,id=blk0,drive=d0,addr=0x3",
      "-qmp", "unix:/tmp/kiln.sock,server,nowait",
      "-uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    ]);
    expect(cfg.devices).toHaveLength(1);
  });

  test("vmUsage() returns the text", () => {
    expect(vmUsage()).toBe(VM_USAGE);
    expect(VM_USAGE).toStartWith("Usage: kiln");
  });
});
