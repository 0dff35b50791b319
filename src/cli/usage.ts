/**
 * `kiln --help`: one line per VM flag, in StratoVirt's style. Keep in step with src/cli/args.ts
 * (test/unit/cli-usage.test.ts checks that every flag the parser knows is documented here).
 */
export const VM_USAGE = `Usage: kiln [OPTIONS]                      start a VM (StratoVirt's single-dash flags; --flag works too)
       kiln qmp SOCKET [COMMAND [JSON-ARGS]] [--events]  send one QMP command to a running kiln (or stream its events)
Values always follow their flag as the next argument (-m 512M, not -m=512M). Option strings are
key=value lists separated by ','; write ',,' for a literal comma. Booleans: on|off (also true|false, yes|no).
Single-valued flags may repeat: the last one wins. Numbers are decimal unless written 0x...

Machine:
  -machine [type=]microvm|q35[,mem-share=on|off][,dump-guest-core=on|off][,accel=kvm]  machine type (default microvm: virtio-mmio, legacy devices, ACPI, no PCI; q35: PCIe bus pcie.0, virtio-pci, ACPI)
  -accel kvm                                  accelerator; only kvm
  -enable-kvm                                 same as -accel kvm (QEMU's spelling)
  -cpu host                                   CPU model; only host (the guest sees the host CPU)
  -m [size=]N[K|M|G|T]                        guest RAM, no suffix = MiB (default 256M; 16M..512G, a multiple of 4K)
  -smp [cpus=]N[,maxcpus=N][,sockets=N][,dies=N][,clusters=N][,cores=N][,threads=N]  vCPUs 1..254 (default 1); sockets*dies*clusters*cores*threads must equal maxcpus
  -name [guest=]NAME                          VM name, e.g. for QMP and logs
  -uuid UUID                                  VM UUID, e.g. 6ba7b810-9dad-11d1-80b4-00c04fd430c8

Boot:
  -kernel PATH                                kernel image (required, on a migration destination too)
  -initrd PATH                                initial ramdisk
  -append CMDLINE                             kernel command line

Block and network:
  -drive file=PATH,id=ID[,if=none][,format=raw][,readonly=on|off][,direct=on|off][,aio=native|io_uring|threads|off][,throttling.iops-total=N][,serial=S]  raw disk image backend (direct defaults to on, as StratoVirt)
  -netdev tap,id=ID,ifname=TAP|fd=N[,queues=N][,vhost=off][,script=no][,downscript=no]  tap backend (1..16 queue pairs; vhost=on is not supported)
  -device virtio-blk-pci,drive=ID[,addr=SLOT[.FN]][,id=ID][,bus=pcie.0|ROOTPORT][,multifunction=on|off][,serial=S][,num-queues=N][,queue-size=N][,bootindex=N]  virtio disk on q35
  -device virtio-blk-device,drive=ID[,id=ID][,serial=S][,num-queues=N][,queue-size=N][,bootindex=N]  virtio-mmio disk on microvm
  -device virtio-net-pci,netdev=ID[,addr=SLOT[.FN]][,id=ID][,bus=pcie.0|ROOTPORT][,multifunction=on|off][,mac=MAC][,mq=on|off][,queue-size=N]  virtio NIC on q35 (default MACs 52:54:00:12:34:56, :57, ...; without addr, the first free slot)
  -device virtio-net-device,netdev=ID[,id=ID][,mac=MAC][,mq=on|off][,queue-size=N]  virtio-mmio NIC on microvm
  -device pcie-root-port,id=ID,addr=SLOT[.FN][,bus=pcie.0][,port=N][,chassis=N][,multifunction=on|off]  PCIe root port on q35; devices behind it use bus=ID,addr=0x0

Character devices and monitor:
  -chardev stdio|pty,id=ID  |  file,id=ID,path=FILE  |  socket,id=ID,path=PATH|host=HOST,port=PORT,server[,nowait]  a backend for -serial chardev:ID or -mon
  -serial stdio|pty|none|file,path=FILE|socket,path=PATH,server,nowait|unix:PATH,server[,nowait]|tcp:HOST:PORT,server[,nowait]|chardev:ID  COM1 backend (default none: output discarded)
  -qmp unix:PATH,server,nowait | tcp:HOST:PORT,server,nowait  QMP listener (repeatable)
  -mon chardev=ID,mode=control                QMP on a -chardev socket (repeatable)
  -nographic                                  accepted; kiln has no display (the serial console goes where -serial says)
  -display none                               accepted; kiln has no display

Migration:
  -incoming tcp:HOST:PORT|tcp:[IPv6]:PORT|unix:PATH|file:DIR[,mapped=on|off]|exec:COMMAND|defer  wait for an incoming migration (or restore a snapshot) instead of booting; defer waits for QMP migrate-incoming

Process:
  -D [PATH]                                   write the log to PATH (default, and -D alone: stderr)
  -pidfile PATH                               write kiln's pid to PATH
  -daemonize                                  detach into the background once the VM is set up (not with a stdio serial)
  -S                                          do not start the vCPUs until QMP cont
  -no-reboot                                  exit when the guest resets instead of rebooting it
  -no-shutdown                                pause (keeping QMP up) when the guest powers off instead of exiting
  -h, -help, --help                           show this help
  -version, --version                         show kiln's version

Not supported (rejected with an explanation): -global, -boot, -bios, -object, -numa, -mem-path, -mem-prealloc, -iothread, -vnc, -monitor, -net, -hda, -cdrom.
`;

export function vmUsage(): string {
  return VM_USAGE;
}
