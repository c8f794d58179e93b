/* A driver for checking an export: run one DNN over a file of inputs, write its logits (or its weights).
 *
 *     ws_main DNN N inputs.bin logits.bin    inputs: N x (C*H*W) float32, (C, H, W) order; logits: N x classes
 *     ws_main DNN --weights weights.bin      the DNN's n_weights float32, dequantised (ws_weights)
 *
 * Files through stdio: on the host, or on a microcontroller through semihosting. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws_runtime.h"

static float scratch[WS_SCRATCH_FLOATS];
static float weights[WS_MAX_PAGES * WS_PAGE_SIZE];
static float input[WS_MAX_INPUT];
static float logits[WS_MAX_CLASSES];
static ws_ctx ctx;

static int fail(const char *what) {
    fprintf(stderr, "ws_main: %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) return fail("usage: ws_main DNN N inputs.bin logits.bin | ws_main DNN --weights out.bin");
    if (ws_switch(&ctx, atoi(argv[1])) != 0) return fail("no such DNN");
    const ws_dnn *d = &ws_dnns[ctx.dnn];
    if (strcmp(argv[2], "--weights") == 0) {
        FILE *out = fopen(argv[3], "wb");
        if (!out) return fail("cannot write the weights file");
        ws_weights(&ctx, weights);
        size_t n = fwrite(weights, sizeof(float), (size_t)d->n_weights, out);
        fclose(out);
        return n == (size_t)d->n_weights ? 0 : fail("short write");
    }
    if (argc < 5) return fail("usage: ws_main DNN N inputs.bin logits.bin");
    long count = atol(argv[2]);
    size_t size = (size_t)d->c * (size_t)d->h * (size_t)d->w;
    FILE *in = fopen(argv[3], "rb"), *out = fopen(argv[4], "wb");
    if (!in || !out) return fail("cannot open the inputs or the logits file");
    for (long s = 0; s < count; s++) {
        if (fread(input, sizeof(float), size, in) != size) return fail("short read");
        if (ws_run(&ctx, input, logits, scratch) != 0) return fail("ws_run failed");
        if (fwrite(logits, sizeof(float), (size_t)d->classes, out) != (size_t)d->classes) return fail("short write");
    }
    fclose(in);
    fclose(out);
    return 0;
}
