/** The `kiln` command: a VM from StratoVirt's flags, or a subcommand (kiln qmp ...). */
import { infoRequest, parseVmArgs, UsageError } from "./args.ts";
import { vmUsage } from "./usage.ts";
import { ExitCode } from "./exit-codes.ts";
import { runVm } from "./run-vm.ts";
import { VERSION } from "./version.ts";
import { runQmpClient } from "../qmp/client.ts";

export async function main(argv: string[]): Promise<number> {
  // Subcommands first, so that `kiln qmp --help` is the client's help, not the VM's.
  if (argv[0] === "qmp") return runQmpClient(argv.slice(1));
  const info = infoRequest(argv);
  if (info === "help") {
    process.stdout.write(vmUsage());
    return ExitCode.Ok;
  }
  if (info === "version") {
    process.stdout.write(`kiln ${VERSION} (Bun ${Bun.version})\n`);
    return ExitCode.Ok;
  }
  let cfg;
  try {
    cfg = parseVmArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`kiln: ${e.message}\n`);
      return ExitCode.Usage;
    }
    throw e;
  }
  return runVm(cfg, argv);
}
