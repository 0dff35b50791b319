/**
 * kiln's exit statuses, so a supervisor can tell what happened without parsing logs.
 * Signals that end kiln (SIGINT, SIGTERM, SIGHUP) exit with 128 + the signal number after a clean stop.
 */
export const ExitCode = {
  /** The guest powered off (ACPI S5), or kiln was told to quit (QMP quit, C-a x). */
  Ok: 0,
  /** kiln could not start or run the VM (bad kernel file, no KVM, I/O error...). */
  Error: 1,
  /** Bad command line. */
  Usage: 2,
  /** The guest asked for a reset and -no-reboot was given. */
  GuestReset: 3,
  /** The guest crashed: triple fault or a KVM internal error (registers are dumped to stderr). */
  GuestCrashed: 4,
} as const;
