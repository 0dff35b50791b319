/**
 * The KVM userspace ABI for x86-64: ioctl numbers, capabilities, exit reasons and struct layouts,
 * each defined once by name. test/unit/kvm-abi.test.ts checks them against <linux/kvm.h> with a C program.
 */
import { struct, u8, u16, u32, u64, i64 } from "./struct.ts";

// _IOC encoding (asm-generic/ioctl.h): dir<<30 | size<<16 | type<<8 | nr.
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;
const ioc = (dir: number, nr: number, size: number) => ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const IO = (nr: number) => ioc(IOC_NONE, nr, 0);
const IOR = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const IOW = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const IOWR = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

// ---- struct layouts ----

export const KvmSegment = struct("kvm_segment", 24, {
  base: u64(0),
  limit: u32(8),
  selector: u16(12),
  type: u8(14),
  present: u8(15),
  dpl: u8(16),
  db: u8(17),
  s: u8(18),
  l: u8(19),
  g: u8(20),
  avl: u8(21),
  unusable: u8(22),
});

export const KvmDtable = struct("kvm_dtable", 16, { base: u64(0), limit: u16(8) });

export const KvmRegs = struct("kvm_regs", 144, {
  rax: u64(0),
  rbx: u64(8),
  rcx: u64(16),
  rdx: u64(24),
  rsi: u64(32),
  rdi: u64(40),
  rsp: u64(48),
  rbp: u64(56),
  r8: u64(64),
  r9: u64(72),
  r10: u64(80),
  r11: u64(88),
  r12: u64(96),
  r13: u64(104),
  r14: u64(112),
  r15: u64(120),
  rip: u64(128),
  rflags: u64(136),
});

/** kvm_sregs: eight kvm_segment (cs ds es fs gs ss tr ldt), gdt, idt, control registers, interrupt bitmap. */
export const SREGS_SEGMENT_OFFSETS = { cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168 } as const;
export const KvmSregs = struct("kvm_sregs", 312, {
  gdt_base: u64(192),
  gdt_limit: u16(200),
  idt_base: u64(208),
  idt_limit: u16(216),
  cr0: u64(224),
  cr2: u64(232),
  cr3: u64(240),
  cr4: u64(248),
  cr8: u64(256),
  efer: u64(264),
  apic_base: u64(272),
});

export const KvmFpu = struct("kvm_fpu", 416, {
  fcw: u16(128),
  fsw: u16(130),
  ftwx: u8(132),
  last_opcode: u16(134),
  last_ip: u64(136),
  last_dp: u64(144),
  mxcsr: u32(408),
});

/** kvm_msrs header; entries of KVM_MSR_ENTRY_SIZE bytes follow: index u32 @0, data u64 @8. */
export const KvmMsrs = struct("kvm_msrs", 8, { nmsrs: u32(0) });
export const KVM_MSR_ENTRY_SIZE = 16;

/** kvm_cpuid2 header; entries of KVM_CPUID_ENTRY_SIZE bytes follow. */
export const KvmCpuid2 = struct("kvm_cpuid2", 8, { nent: u32(0) });
export const KvmCpuidEntry2 = struct("kvm_cpuid_entry2", 40, {
  function: u32(0),
  index: u32(4),
  flags: u32(8),
  eax: u32(12),
  ebx: u32(16),
  ecx: u32(20),
  edx: u32(24),
});
export const KVM_CPUID_ENTRY_SIZE = 40;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

export const KVM_LAPIC_STATE_SIZE = 1024;
export const KVM_XSAVE_SIZE = 4096;
export const KVM_XCRS_SIZE = 392;
export const KVM_VCPU_EVENTS_SIZE = 64;
export const KVM_DEBUGREGS_SIZE = 128;
export const KVM_IRQCHIP_SIZE = 520;
export const KVM_PIT_STATE2_SIZE = 112;

export const KvmMpState = struct("kvm_mp_state", 4, { mp_state: u32(0) });
export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_UNINITIALIZED = 1;
export const KVM_MP_STATE_INIT_RECEIVED = 2;
export const KVM_MP_STATE_HALTED = 3;
export const KVM_MP_STATE_SIPI_RECEIVED = 4;

export const KvmUserspaceMemoryRegion = struct("kvm_userspace_memory_region", 32, {
  slot: u32(0),
  flags: u32(4),
  guest_phys_addr: u64(8),
  memory_size: u64(16),
  userspace_addr: u64(24),
});
export const KVM_MEM_LOG_DIRTY_PAGES = 1;

export const KvmDirtyLog = struct("kvm_dirty_log", 16, { slot: u32(0), dirty_bitmap: u64(8) });
export const KvmClearDirtyLog = struct("kvm_clear_dirty_log", 24, {
  slot: u32(0),
  num_pages: u32(4),
  first_page: u64(8),
  dirty_bitmap: u64(16),
});

export const KvmIrqLevel = struct("kvm_irq_level", 8, { irq: u32(0), level: u32(4) });
export const KvmPitConfig = struct("kvm_pit_config", 64, { flags: u32(0) });
export const KVM_PIT_SPEAKER_DUMMY = 1;

export const KvmIrqchip = struct("kvm_irqchip", KVM_IRQCHIP_SIZE, { chip_id: u32(0) });
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;

export const KvmClockData = struct("kvm_clock_data", 48, {
  clock: u64(0),
  flags: u32(8),
  realtime: u64(16),
  host_tsc: u64(24),
});
export const KVM_CLOCK_TSC_STABLE = 2;
export const KVM_CLOCK_REALTIME = 4;
export const KVM_CLOCK_HOST_TSC = 8;

/** kvm_irq_routing header; entries of KVM_IRQ_ROUTING_ENTRY_SIZE bytes follow. */
export const KvmIrqRouting = struct("kvm_irq_routing", 8, { nr: u32(0), flags: u32(4) });
export const KvmIrqRoutingEntry = struct("kvm_irq_routing_entry", 48, {
  gsi: u32(0),
  type: u32(4),
  flags: u32(8),
  // union u @16: irqchip {irqchip u32, pin u32}; msi {address_lo, address_hi, data, devid}
  irqchip: u32(16),
  pin: u32(20),
  address_lo: u32(16),
  address_hi: u32(20),
  data: u32(24),
});
export const KVM_IRQ_ROUTING_ENTRY_SIZE = 48;
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_IRQ_ROUTING_MSI = 2;

export const KvmIoeventfd = struct("kvm_ioeventfd", 64, {
  datamatch: u64(0),
  addr: u64(8),
  len: u32(16),
  fd: u32(20),
  flags: u32(24),
});
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;

export const KvmIrqfd = struct("kvm_irqfd", 32, { fd: u32(0), gsi: u32(4), flags: u32(8), resamplefd: u32(12) });
export const KVM_IRQFD_FLAG_DEASSIGN = 1;

export const KvmMsi = struct("kvm_msi", 32, { address_lo: u32(0), address_hi: u32(4), data: u32(8), flags: u32(12) });

export const KvmDeviceAttr = struct("kvm_device_attr", 24, { flags: u32(0), group: u32(4), attr: u64(8), addr: u64(16) });
export const KVM_VCPU_TSC_CTRL = 0;
export const KVM_VCPU_TSC_OFFSET = 0;

export const KvmEnableCap = struct("kvm_enable_cap", 104, { cap: u32(0), flags: u32(4), args0: u64(8), args1: u64(16) });

/**
 * struct kvm_run, the page KVM shares with userspace per vCPU. Only the fields kiln reads are named;
 * the exit-specific union starts at 32.
 */
export const KvmRun = struct("kvm_run", 2352, {
  request_interrupt_window: u8(0),
  immediate_exit: u8(1),
  exit_reason: u32(8),
  ready_for_interrupt_injection: u8(12),
  if_flag: u8(13),
  flags: u16(14),
  cr8: u64(16),
  apic_base: u64(24),
  // KVM_EXIT_IO
  io_direction: u8(32),
  io_size: u8(33),
  io_port: u16(34),
  io_count: u32(36),
  io_data_offset: u64(40),
  // KVM_EXIT_MMIO
  mmio_phys_addr: u64(32),
  mmio_data: u64(40),
  mmio_len: u32(48),
  mmio_is_write: u8(52),
  // KVM_EXIT_FAIL_ENTRY
  fail_entry_reason: u64(32),
  fail_entry_cpu: u32(40),
  // KVM_EXIT_INTERNAL_ERROR
  internal_suberror: u32(32),
  internal_ndata: u32(36),
  // KVM_EXIT_SYSTEM_EVENT
  system_event_type: u32(32),
  system_event_ndata: u32(36),
  // KVM_EXIT_X86_RDMSR / WRMSR
  msr_error: u8(32),
  msr_reason: u32(36),
  msr_index: u32(40),
  msr_data: u64(48),
  // KVM_EXIT_DEBUG / others read from 32 as raw data
  raw0: i64(32),
});
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KvmExit = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  IOAPIC_EOI: 26,
  X86_RDMSR: 29,
  X86_WRMSR: 30,
} as const;

export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;

export function exitReasonName(reason: number): string {
  for (const [k, v] of Object.entries(KvmExit)) if (v === reason) return k;
  return `exit ${reason}`;
}

// ---- ioctl numbers ----
export const Ioctl = {
  // /dev/kvm
  GET_API_VERSION: IO(0x00),
  CREATE_VM: IO(0x01),
  GET_MSR_INDEX_LIST: IOWR(0x02, 4),
  CHECK_EXTENSION: IO(0x03),
  GET_VCPU_MMAP_SIZE: IO(0x04),
  GET_SUPPORTED_CPUID: IOWR(0x05, 8),
  GET_MSR_FEATURE_INDEX_LIST: IOWR(0x0a, 4),
  // VM
  CREATE_VCPU: IO(0x41),
  GET_DIRTY_LOG: IOW(0x42, 16),
  SET_USER_MEMORY_REGION: IOW(0x46, 32),
  SET_TSS_ADDR: IO(0x47),
  SET_IDENTITY_MAP_ADDR: IOW(0x48, 8),
  CREATE_IRQCHIP: IO(0x60),
  IRQ_LINE: IOW(0x61, 8),
  GET_IRQCHIP: IOWR(0x62, KVM_IRQCHIP_SIZE),
  SET_IRQCHIP: IOR(0x63, KVM_IRQCHIP_SIZE),
  SET_GSI_ROUTING: IOW(0x6a, 8),
  IRQFD: IOW(0x76, 32),
  CREATE_PIT2: IOW(0x77, 64),
  IOEVENTFD: IOW(0x79, 64),
  SET_CLOCK: IOW(0x7b, 48),
  GET_CLOCK: IOR(0x7c, 48),
  GET_PIT2: IOR(0x9f, KVM_PIT_STATE2_SIZE),
  SET_PIT2: IOW(0xa0, KVM_PIT_STATE2_SIZE),
  ENABLE_CAP: IOW(0xa3, 104),
  SIGNAL_MSI: IOW(0xa5, 32),
  CLEAR_DIRTY_LOG: IOWR(0xc0, 24),
  // vCPU
  RUN: IO(0x80),
  GET_REGS: IOR(0x81, 144),
  SET_REGS: IOW(0x82, 144),
  GET_SREGS: IOR(0x83, 312),
  SET_SREGS: IOW(0x84, 312),
  GET_MSRS: IOWR(0x88, 8),
  SET_MSRS: IOW(0x89, 8),
  GET_FPU: IOR(0x8c, 416),
  SET_FPU: IOW(0x8d, 416),
  GET_LAPIC: IOR(0x8e, KVM_LAPIC_STATE_SIZE),
  SET_LAPIC: IOW(0x8f, KVM_LAPIC_STATE_SIZE),
  SET_CPUID2: IOW(0x90, 8),
  GET_CPUID2: IOWR(0x91, 8),
  NMI: IO(0x9a),
  GET_MP_STATE: IOR(0x98, 4),
  SET_MP_STATE: IOW(0x99, 4),
  GET_VCPU_EVENTS: IOR(0x9f, KVM_VCPU_EVENTS_SIZE),
  SET_VCPU_EVENTS: IOW(0xa0, KVM_VCPU_EVENTS_SIZE),
  GET_DEBUGREGS: IOR(0xa1, KVM_DEBUGREGS_SIZE),
  SET_DEBUGREGS: IOW(0xa2, KVM_DEBUGREGS_SIZE),
  SET_TSC_KHZ: IO(0xa2),
  GET_TSC_KHZ: IO(0xa3),
  GET_XSAVE: IOR(0xa4, KVM_XSAVE_SIZE),
  SET_XSAVE: IOW(0xa5, KVM_XSAVE_SIZE),
  GET_XCRS: IOR(0xa6, KVM_XCRS_SIZE),
  SET_XCRS: IOW(0xa7, KVM_XCRS_SIZE),
  KVMCLOCK_CTRL: IO(0xad),
  GET_XSAVE2: IOR(0xcf, KVM_XSAVE_SIZE),
  SET_DEVICE_ATTR: IOW(0xe1, 24),
  GET_DEVICE_ATTR: IOW(0xe2, 24),
  HAS_DEVICE_ATTR: IOW(0xe3, 24),
} as const;

export const KvmCap = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  MP_STATE: 14,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  PIT2: 33,
  PIT_STATE2: 35,
  IOEVENTFD: 36,
  SET_IDENTITY_MAP_ADDR: 37,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  GET_TSC_KHZ: 61,
  MAX_VCPUS: 66,
  SIGNAL_MSI: 77,
  IMMEDIATE_EXIT: 136,
  MANUAL_DIRTY_LOG_PROTECT2: 168,
  X86_USER_SPACE_MSR: 188,
  XSAVE2: 208,
  VCPU_ATTRIBUTES: 127,
} as const;

export const KVM_API_VERSION = 12;
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;
export const KVM_DIRTY_LOG_INITIALLY_SET = 2;
