/* weightsep's C runtime: run DNNs packed into weight pages, with no dynamic allocation.
 *
 * A store exported by `python -m weightsep export --format c` is two levels of const pages:
 * level 1, the shared pages every DNN reads (section .ws_level1: place it in the fastest memory),
 * and level 2, each DNN's exclusive pages and page table (section .ws_level2). A switch resolves a
 * DNN's page table into page pointers (ws_switch: one entry per page, no weight is copied); an
 * inference reads every weight through them, dequantising int8 pages on the fly (ws_run).
 *
 *     ws_ctx ctx;                      static float scratch[WS_SCRATCH_FLOATS];
 *     ws_switch(&ctx, WS_DNN_fashion);
 *     ws_run(&ctx, input, logits, scratch);   // input (C, H, W) float32; logits[classes]
 */
#ifndef WS_RUNTIME_H
#define WS_RUNTIME_H

#include <stdint.h>

#include "ws_model.h" /* generated: WS_PAGE_SIZE, WS_INT8, WS_N_DNNS, WS_MAX_PAGES, WS_SCRATCH_FLOATS, WS_DNN_* */

#if WS_INT8
typedef int8_t ws_value; /* a page holds int8 codes and one float32 scale */
#else
typedef float ws_value; /* a page holds float32 weights */
#endif

enum { WS_LEAKY_RELU = 0, WS_SIGMOID = 1, WS_RELU = 2 };

typedef struct {
    int16_t kh, kw, out, pool_h, pool_w; /* a VALID conv, then a VALID max pool, then leaky ReLU (0.2) */
} ws_conv;

typedef struct {
    const char *name;
    int16_t c, h, w;       /* input shape (C, H, W); a dense-only DNN has h = w = 1 */
    int16_t n_convs, n_dense, classes, hidden_act;
    const ws_conv *convs;
    const int16_t *dense;  /* hidden widths */
    int32_t n_weights, n_pages;
    const uint16_t *page_table; /* entry < WS_N_SHARED: a shared page; else exclusive page entry - WS_N_SHARED */
    const ws_value (*exclusive)[WS_PAGE_SIZE];
    const float *exclusive_scales; /* int8 only */
} ws_dnn;

typedef struct {
    int dnn;
    const ws_value *page[WS_MAX_PAGES];
#if WS_INT8
    float scale[WS_MAX_PAGES];
#endif
} ws_ctx;

extern const ws_dnn ws_dnns[WS_N_DNNS];

/* Resolve DNN `dnn`'s page table into `ctx`; 0, or -1 for an unknown DNN. */
int ws_switch(ws_ctx *ctx, int dnn);

/* The switched DNN's logits for one input; `scratch` holds WS_SCRATCH_FLOATS floats. 0, or -1. */
int ws_run(const ws_ctx *ctx, const float *input, float *logits, float *scratch);

/* The switched DNN's weights, dequantised into `out` (its n_weights floats): a check, not the runtime's path. */
void ws_weights(const ws_ctx *ctx, float *out);

#endif
