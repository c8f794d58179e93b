/* Instructions per switch, per inference and per copy of a DNN's weights, on a Cortex-M under QEMU with
 * `-icount shift=0` (every instruction one virtual nanosecond): SysTick, clocked by the processor,
 * counts the virtual time; a loop of known length converts its ticks to instructions.
 *
 *     ws_count DNN inputs.bin      prints: dnn switch_instructions inference_instructions copy_instructions
 *
 * The copy is memcpy of the DNN's n_weights values in the store's format from level 1 into RAM (what a
 * switch that copies one DNN's weights moves; level 1 holds at least the largest DNN's pages). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws_runtime.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CALIBRATION_LOOPS 1000000u /* two instructions each */

static float scratch[WS_SCRATCH_FLOATS];
static float input[WS_MAX_INPUT];
static float logits[WS_MAX_CLASSES];
static ws_value copy[WS_MAX_PAGES * WS_PAGE_SIZE];
static ws_ctx ctx;
extern const ws_value ws_shared_pages[WS_N_SHARED][WS_PAGE_SIZE];

static uint32_t ticks(void) { return 0xFFFFFFu - SYST_CVR; } /* counts down from 2^24 - 1 */

static void start(void) {
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5; /* enabled, processor clock, no interrupt */
}

static void spin(uint32_t n) { __asm volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n)); }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int dnn = atoi(argv[1]);
    if (dnn < 0 || dnn >= WS_N_DNNS || (int32_t)WS_N_SHARED * WS_PAGE_SIZE < ws_dnns[dnn].n_weights) return 2;
    start();
    spin(CALIBRATION_LOOPS);
    double per_tick = 2.0 * CALIBRATION_LOOPS / ticks();
    start();
    if (ws_switch(&ctx, dnn) != 0) return 2;
    uint32_t t_switch = ticks();
    const ws_dnn *d = &ws_dnns[dnn];
    FILE *in = fopen(argv[2], "rb");
    size_t size = (size_t)d->c * (size_t)d->h * (size_t)d->w;
    if (!in || fread(input, sizeof(float), size, in) != size) return 3;
    fclose(in);
    start();
    ws_run(&ctx, input, logits, scratch);
    uint32_t t_run = ticks();
    start();
    memcpy(copy, ws_shared_pages, (size_t)d->n_weights * sizeof(ws_value));
    uint32_t t_copy = ticks();
    printf("%d %.0f %.0f %.0f\n", dnn, t_switch * per_tick, t_run * per_tick, t_copy * per_tick);
    return 0;
}
