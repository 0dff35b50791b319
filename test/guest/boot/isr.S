/*
 * Interrupt stubs at the fixed address ISR_BASE, 16 bytes each, plus the common path into C (kernel/trap.c).
 * Hot paths stay in assembly because CPL0 is emulated: the timer/wake interrupt is 5 instructions and a
 * TSC-deadline sleep syscall about 15.
 */
#include "layout.h"

        .section .text.isr_stubs, "ax"
        .code64
        .globl isr_stubs
isr_stubs:
        .set v, 0
        .rept 256
        .if v == VEC_TIMER || v == VEC_WAKE
        pushq %rax
        movl $(LAPIC_DEFAULT + 0xB0), %eax      /* EOI */
        movl $0, (%rax)
        popq %rax
        iretq
        .elseif v == VEC_SPURIOUS
        iretq
        .elseif v == VEC_SYSCALL
        jmp syscall_entry
        .else
        .if !(v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30)
        pushq $0                                /* no CPU error code: push a dummy */
        .endif
        pushq $v
        jmp isr_common
        .endif
        .org isr_stubs + (v + 1) * ISR_STRIDE, 0xCC
        .set v, v + 1
        .endr

        .text
        .code64
syscall_entry:
        cmpq $SYS_SLEEP, %rax
        jne 1f
        cmpb $0, timer_deadline_mode
        je 1f
        pushq %rcx
        pushq %rdx
        movl $MSR_TSC_DEADLINE, %ecx
        movq %rdi, %rax
        movq %rdi, %rdx
        shrq $32, %rdx
        wrmsr
        sti
        hlt
        cli
        popq %rdx
        popq %rcx
        xorl %eax, %eax
        iretq
1:      pushq $0
        pushq $VEC_SYSCALL
        jmp isr_common

        .globl isr_common
isr_common:
        pushq %rax
        pushq %rcx
        pushq %rdx
        pushq %rsi
        pushq %rdi
        pushq %r8
        pushq %r9
        pushq %r10
        pushq %r11
        movq %rsp, %rdi
        cld
        call trap
        popq %r11
        popq %r10
        popq %r9
        popq %r8
        popq %rdi
        popq %rsi
        popq %rdx
        popq %rcx
        popq %rax
        addq $16, %rsp
        iretq
