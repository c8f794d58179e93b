/* A minimal start for a Cortex-M4F on QEMU's mps2-an386 board (the check of an export, docs/deploy.md):
 * the vector table, the FPU switched on, then newlib's _start (rdimon: stdio, files and argv through
 * semihosting). A real board's startup also copies .data from flash and sets up its clocks. */
#include <stdint.h>

void _exit(int status); /* newlib's: semihosting SYS_EXIT */

extern uint32_t __stack_top; /* mps2_an386.ld */
extern void _start(void);

void ws_reset(void) {
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10, CP11 (the FPU) */
    __asm volatile("dsb\n\tisb");
    _start();
    for (;;) {
    }
}

static void ws_fault(void) { _exit(99); } /* a fault ends the run with status 99 (semihosting SYS_EXIT) */

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&__stack_top, ws_reset, ws_fault, ws_fault, ws_fault, ws_fault, ws_fault,
    0, 0, 0, 0, ws_fault, ws_fault, 0, ws_fault, ws_fault};
