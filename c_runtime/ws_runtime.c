/* weightsep's C runtime (see ws_runtime.h): page-table switch and the papers' template network
 * (VALID convs, max pooling, leaky ReLU, dense layers), C99, no dynamic allocation. */
#include "ws_runtime.h"

#include <math.h>
#include <stddef.h>

#if WS_INT8
extern const int8_t ws_shared_pages[WS_N_SHARED][WS_PAGE_SIZE];
extern const float ws_shared_scales[WS_N_SHARED];
#else
extern const float ws_shared_pages[WS_N_SHARED][WS_PAGE_SIZE];
#endif

int ws_switch(ws_ctx *ctx, int dnn) {
    if (dnn < 0 || dnn >= WS_N_DNNS) return -1;
    const ws_dnn *d = &ws_dnns[dnn];
    for (int32_t p = 0; p < d->n_pages; p++) {
        uint16_t e = d->page_table[p];
        if (e < WS_N_SHARED) {
            ctx->page[p] = ws_shared_pages[e];
#if WS_INT8
            ctx->scale[p] = ws_shared_scales[e];
#endif
        } else {
            ctx->page[p] = d->exclusive[e - WS_N_SHARED];
#if WS_INT8
            ctx->scale[p] = d->exclusive_scales[e - WS_N_SHARED];
#endif
        }
    }
    ctx->dnn = dnn;
    return 0;
}

/* Weight i of the switched DNN: its page's value (times the page's scale for int8, exactly as
 * weightsep dequantises: the float32 product). */
static inline float weight(const ws_ctx *ctx, int32_t i) {
    int32_t p = i / WS_PAGE_SIZE;
#if WS_INT8
    return (float)ctx->page[p][i - p * WS_PAGE_SIZE] * ctx->scale[p];
#else
    return ctx->page[p][i - p * WS_PAGE_SIZE];
#endif
}

void ws_weights(const ws_ctx *ctx, float *out) {
    for (int32_t i = 0; i < ws_dnns[ctx->dnn].n_weights; i++) out[i] = weight(ctx, i);
}

static float activate(float x, int act) {
    switch (act) {
    case WS_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case WS_RELU: return x > 0.0f ? x : 0.0f;
    default: return x > 0.0f ? x : x * 0.2f;
    }
}

int ws_run(const ws_ctx *ctx, const float *input, float *logits, float *scratch) {
    if (ctx->dnn < 0 || ctx->dnn >= WS_N_DNNS) return -1;
    const ws_dnn *d = &ws_dnns[ctx->dnn];
    float *a = scratch, *b = scratch + WS_SCRATCH_FLOATS / 2; /* ping-pong activations, NHWC */
    int c = d->c, h = d->h, w = d->w;
    int32_t at = 0; /* the next weight tensor's offset in the flat vector */
    for (int y = 0; y < h; y++) /* (C, H, W) in, (H, W, C) inside: the flatten is in NHWC order */
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) a[(y * w + x) * c + k] = input[(k * h + y) * w + x];
    for (int l = 0; l < d->n_convs; l++) {
        const ws_conv *cv = &d->convs[l];
        int oh = h - cv->kh + 1, ow = w - cv->kw + 1, o = cv->out;
        int32_t bias = at + cv->kh * cv->kw * c * o;
        for (int y = 0; y < oh; y++) /* kernel HWIO at `at`, bias after it */
            for (int x = 0; x < ow; x++)
                for (int m = 0; m < o; m++) {
                    float acc = 0.0f;
                    for (int i = 0; i < cv->kh; i++)
                        for (int j = 0; j < cv->kw; j++)
                            for (int k = 0; k < c; k++)
                                acc += a[((y + i) * w + (x + j)) * c + k] * weight(ctx, at + ((i * cv->kw + j) * c + k) * o + m);
                    b[(y * ow + x) * o + m] = acc + weight(ctx, bias + m);
                }
        at = bias + o;
        int ph = oh / cv->pool_h, pw = ow / cv->pool_w; /* VALID max pool, then leaky ReLU (0.2) */
        for (int y = 0; y < ph; y++)
            for (int x = 0; x < pw; x++)
                for (int m = 0; m < o; m++) {
                    float best = -INFINITY;
                    for (int i = 0; i < cv->pool_h; i++)
                        for (int j = 0; j < cv->pool_w; j++) {
                            float v = b[((y * cv->pool_h + i) * ow + (x * cv->pool_w + j)) * o + m];
                            best = v > best ? v : best;
                        }
                    a[(y * pw + x) * o + m] = best > 0.0f ? best : best * 0.2f;
                }
        h = ph, w = pw, c = o;
    }
    int n = h * w * c; /* dense layers: x @ W [in, out] + bias */
    for (int l = 0; l <= d->n_dense; l++) {
        int out = l < d->n_dense ? d->dense[l] : d->classes;
        float *y = l < d->n_dense ? b : logits;
        for (int m = 0; m < out; m++) {
            float acc = 0.0f;
            for (int k = 0; k < n; k++) acc += a[k] * weight(ctx, at + k * out + m);
            acc += weight(ctx, at + n * out + m);
            y[m] = l < d->n_dense ? activate(acc, d->hidden_act) : acc;
        }
        at += n * out + out;
        n = out;
        float *t = a; a = b; b = t;
    }
    return 0;
}
