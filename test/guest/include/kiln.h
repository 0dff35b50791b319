/* kiln test guest: common types, hardware access and the library's interfaces. */
#ifndef KILN_GUEST_H
#define KILN_GUEST_H

#include "layout.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef signed long s64;
typedef unsigned long size_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)
#define U64_MAX (~0UL)

typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, t) __builtin_va_arg(ap, t)
#define va_end(ap) __builtin_va_end(ap)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((u64)(a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((u64)(a) - 1))
#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* ---- port and memory-mapped I/O (all usable at CPL3: TSS I/O bitmap, user-mapped pages) ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }

static inline u64 rdtsc(void)
{
        u32 lo, hi;
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        return ((u64)hi << 32) | lo;
}
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
        __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* ---- system calls into CPL0 (int3 through the DPL3 gate; rax = number) ---- */
static inline u64 syscall2(u64 nr, u64 a, u64 b)
{
        u64 r;
        __asm__ volatile("int3" : "=a"(r) : "a"(nr), "D"(a), "S"(b) : "memory");
        return r;
}
static inline void sys_sleep(u64 deadline) { syscall2(SYS_SLEEP, deadline, 0); }
static inline __attribute__((noreturn)) void sys_halt(void) { syscall2(SYS_HALT, 0, 0); __builtin_unreachable(); }
static inline u64 sys_rdmsr(u32 msr) { return syscall2(SYS_RDMSR, msr, 0); }
static inline void sys_wrmsr(u32 msr, u64 v) { syscall2(SYS_WRMSR, msr, v); }

/* ---- lib/string.c ---- */
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);

/* ---- lib/format.c: tiny printf (%d %u %x %s %c, 'l' modifier, '0' flag and width) ---- */
int vformat(char *buf, int size, const char *fmt, va_list ap);
int format(char *buf, int size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- lib/serial.c: COM1 output, one whole line at a time under a spinlock ---- */
#define LINE_MAX 100            /* characters per output line, not counting the '\n' */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void say_n(int max, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void say_locked_from_cpl0(const char *line);
void serial_write_line(const char *buf, int n);
bool serial_rx_ready(void);
u8 serial_rx(void);

/* ---- lib/bootinfo.c: hvm_start_info, copied at boot ---- */
#define MEMMAP_MAX 128
#define MODULES_MAX 16
#define CMDLINE_MAX 1024
struct memmap_entry { u64 addr, size; u32 type, reserved; };
struct module_info { u64 paddr, size, cmdline_paddr; };
struct bootinfo {
        bool valid;             /* magic matched */
        u32 magic, version, flags;
        u64 start_info_pa, rsdp_paddr, cmdline_paddr, memmap_paddr, modlist_paddr;
        int nr_memmap;
        struct memmap_entry memmap[MEMMAP_MAX];
        const char *memmap_src; /* "pvh", "cmos" or "default" */
        int nr_modules;
        struct module_info modules[MODULES_MAX];
        char cmdline[CMDLINE_MAX];
};
extern struct bootinfo boot;
extern u64 start_info_pa;
extern u64 entry_tsc;           /* TSC read by the first instructions at the PVH entry */
void bootinfo_init(void);
u64 ram_bytes(void);

/* ---- lib/cmdline.c ---- */
bool cmdline_has(const char *key);
bool cmdline_str(const char *key, const char **val, int *len);
bool cmdline_is(const char *key, const char *value);
u64 cmdline_u64(const char *key, u64 dflt);
bool parse_u64(const char *s, int len, u64 *out);
bool parse_size(const char *s, int len, u64 *out);

/* ---- lib/acpi.c ---- */
struct gas { u8 space, bit_width, bit_offset, access_size; u64 addr; };
struct acpi_info {
        u64 rsdp, xsdt, rsdt, madt, fadt, dsdt;
        const char *rsdp_src;   /* "pvh" or "scan" */
        u64 lapic_base;
        int nr_cpus;
        u8 apic_ids[MAX_CPUS];
        u32 pm1a_evt, pm1a_cnt, pm1b_cnt, pm_tmr;
        u32 fadt_flags;
        struct gas sleep_ctl;
        bool s5_found;
        u8 s5_slp_typ;
};
extern struct acpi_info acpi;
void acpi_init(void);

/* ---- lib/tsc.c ---- */
extern u64 tsc_khz;
extern const char *tsc_src;
void tsc_init(void);
static inline u64 ms_to_tsc(u64 ms) { return ms * tsc_khz; }
static inline u64 us_to_tsc(u64 us) { return us * tsc_khz / 1000; }

/* ---- lib/lapic.c ---- */
extern u8 timer_deadline_mode;  /* read by the CPL0 sleep fast path */
extern u64 lapic_timer_khz;
extern const char *lapic_timer_src;
void lapic_setup_timer_mode(void);
void lapic_init_cpu(void);
u32 lapic_id(void);
void lapic_send_ipi(u32 apic, u32 icr_low);
void lapic_wake_all_others(void);
void lapic_eoi(void);
void sleep_until(u64 deadline_tsc);
void sleep_ms(u64 ms);

/* ---- lib/smp.c and main.c: CPUs ---- */
struct percpu {
        volatile u64 progress;  /* main loop iterations: the HB line's c_i */
        volatile u32 up;        /* printed "CPU i up" */
        volatile u32 running;   /* entered its main loop */
        volatile u32 failed;    /* did not start in time: must not run */
        u32 apic_id;
} __attribute__((aligned(64)));
extern struct percpu percpu[MAX_CPUS];
extern int nr_cpus;             /* CPUs listed (index 0 = BSP) */
extern int nr_cpus_up;
extern volatile u32 halt_all;   /* every CPU halts at CPL0 */
extern u64 ready_tsc;           /* TSC when READY was printed */
void smp_start_aps(void);
__attribute__((noreturn)) void halt_everything(void);

/* ---- lib/power.c ---- */
__attribute__((noreturn)) void do_action(const char *name);
bool action_valid(const char *name, int len);

/* ---- workloads: each file adds one with WORKLOAD(...) ---- */
struct workload {
        const char *name;
        /* BSP, before the APs start: decide whether to run, may print lines (before READY). */
        void (*early)(void);
        /* BSP, after every CPU is up, before READY: e.g. split work among the CPUs that came up. */
        void (*setup)(void);
        /* Every CPU, each main-loop iteration: do a bounded amount of work and return the TSC deadline at
         * which to be called again (0 = as soon as possible, U64_MAX = never).  NULL = nothing per loop. */
        u64 (*tick)(int cpu, u64 now);
};
/* `order` is two digits: hooks run in ascending order (the section names are sorted by the linker). */
#define WORKLOAD(order, id, ...) \
        static const struct workload workload_##id \
        __attribute__((used, section(".workloads." #order "." #id), aligned(8))) = { .name = #id, __VA_ARGS__ }
extern const struct workload __workloads_start[], __workloads_end[];

/* ---- dirtier queries (used by the `then` logic) ---- */
bool dirtier_active(void);
bool dirtier_all_done(u64 passes);

/* ---- linker symbols ---- */
extern char __bss_start[], __bss_end[], _end[], tramp_start[], tramp_end[];

#endif
