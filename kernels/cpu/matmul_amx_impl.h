/* kernels/cpu/matmul_amx_impl.h: the AMX bf16 matmul, written once over a
 * handful of tile macros so that it compiles two ways:
 *   - matmul_amx.c: the real AMX-TILE / AMX-BF16 instructions (-mamx-*);
 *   - with PIO_AMX_EMULATE defined: the same code over plain C tiles, which
 *     test-ops runs on every machine (this project's CI has no AMX), so the
 *     packing, tiling and edge handling are checked everywhere.
 *
 * y[n, m] = xb[n, k] · w[m, k]ᵀ with xb bf16 (bf16 mode: torch's activations
 * are bf16) and w bf16, sums in f32 (TDPBF16PS: products exact). Tiles are
 * 16 rows × 64 bytes: A = 16 tokens × 32 k (straight from xb, whose rows are
 * padded to a multiple of 32 elements and whose row count is padded to 16
 * with zeros), B = 32 k × 16 outputs in the VNNI layout (row r holds the
 * pairs k = 2r, 2r+1 of the 16 w rows), C = 16 × 16 f32. Per k step: 2 A,
 * 2 B, 4 C tiles (32 tokens × 32 outputs). A task packs its w rows 32 at a
 * time into a VNNI panel (k · 64 bytes, in L2) that every token tile reuses.
 *
 * The tile configuration is loaded with inline asm taking the whole 64-byte
 * struct as a memory operand: gcc 12's _tile_loadconfig declares only an
 * 8-byte input, so the compiler may drop the stores that fill the rest
 * (llama.cpp's native build dies with SIGILL on such machines for that).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "matmul_kernels.h"

typedef struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

#ifdef PIO_AMX_EMULATE
/* ---- plain C tiles -------------------------------------------------------- */
static _Thread_local union {
    uint8_t b[16][64];
    float f[16][16];
    uint16_t h[16][32];
} emu_tile[8];

static void emu_load(int t, const void *base, size_t stride) {
    for (int r = 0; r < 16; r++) memcpy(emu_tile[t].b[r], (const char *)base + r * stride, 64);
}
static void emu_store(int t, void *base, size_t stride) {
    for (int r = 0; r < 16; r++) memcpy((char *)base + r * stride, emu_tile[t].b[r], 64);
}
static float emu_bf16(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
static void emu_dp(int c, int a, int b) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float acc = emu_tile[c].f[i][j];
            for (int r = 0; r < 16; r++) /* pair r: k = 2r, 2r + 1 */
                for (int e = 0; e < 2; e++)
                    acc += emu_bf16(emu_tile[a].h[i][2 * r + e]) *
                           emu_bf16(emu_tile[b].h[r][2 * j + e]);
            emu_tile[c].f[i][j] = acc;
        }
}
#define TILE_CONFIG(cfg) ((void)(cfg))
#define TILE_RELEASE() ((void)0)
#define TILE_ZERO(t) memset(emu_tile[t].b, 0, 1024)
#define TILE_LOAD(t, p, s) emu_load(t, p, s)
#define TILE_STORE(t, p, s) emu_store(t, p, s)
#define TILE_DP(c, a, b) emu_dp(c, a, b)
#define AMX_KERNEL pio_matmul_bf16_amx_emulated
#else
/* ---- the real instructions ------------------------------------------------ */
#include <immintrin.h>
#define TILE_CONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(*(const amx_tilecfg *)(cfg)))
#define TILE_RELEASE() _tile_release()
#define TILE_ZERO(t) _tile_zero(t)
#define TILE_LOAD(t, p, s) _tile_loadd(t, p, s)
#define TILE_STORE(t, p, s) _tile_stored(t, p, s)
#define TILE_DP(c, a, b) _tile_dpbf16ps(c, a, b)
#define AMX_KERNEL pio_matmul_bf16_amx
#endif

enum { AMX_N = 32, AMX_M = 32, AMX_K = 32 }; /* tokens, outputs, k per step */

/* Packs w rows j0..j0+31 (rows past m1 as zeros), all k (zeros past k), into
 * the panel: for each k step s, two B tiles of 16 rows × 16 dwords, where
 * row r of tile h holds the pair (2r, 2r+1) of step s for w rows j0+16h..+15. */
static void pack_panel(const uint16_t *w, int64_t k, int64_t j0, int64_t m1, int64_t steps,
                       uint32_t *panel) {
    for (int64_t s = 0; s < steps; s++)
        for (int h = 0; h < 2; h++) {
            uint32_t *tile = panel + (s * 2 + h) * 256;
            for (int n = 0; n < 16; n++) {
                int64_t row = j0 + 16 * h + n;
                const uint16_t *src = w + row * k + s * AMX_K;
                int64_t avail = row < m1 ? k - s * AMX_K : 0; /* elements left in the row */
                for (int r = 0; r < 16; r++) {
                    uint32_t lo = 2 * r < avail ? src[2 * r] : 0;
                    uint32_t hi = 2 * r + 1 < avail ? src[2 * r + 1] : 0;
                    tile[r * 16 + n] = lo | hi << 16;
                }
            }
        }
}

/* Rows m0..m1-1 of w for all n tokens. J->xb has J->xb_ld (a multiple of 32)
 * elements per row and at least round_up(n, 32) rows, zeros in the padding.
 * `panel` holds steps · 2 KiB; `ctile` 4 KiB of scratch for edge tiles. */
void AMX_KERNEL(const pio_matmul_job *J, int64_t m0, int64_t m1, void *panel_buf,
                float *ctile) {
    const int64_t k = J->k, n = J->n, m = J->m, ld = J->xb_ld;
    const int64_t steps = (k + AMX_K - 1) / AMX_K;
    uint32_t *panel = panel_buf;
    amx_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
    TILE_CONFIG(&cfg);
    const size_t a_stride = (size_t)ld * 2;
    for (int64_t j = m0; j < m1; j += AMX_M) {
        pack_panel(J->w, k, j, m1, steps, panel);
        const bool full_m = j + AMX_M <= m1;
        for (int64_t i = 0; i < n; i += AMX_N) {
            TILE_ZERO(0);
            TILE_ZERO(1);
            TILE_ZERO(2);
            TILE_ZERO(3);
            const uint16_t *a = J->xb + i * ld;
            for (int64_t s = 0; s < steps; s++) {
                TILE_LOAD(4, a + s * AMX_K, a_stride);
                TILE_LOAD(5, a + 16 * ld + s * AMX_K, a_stride);
                TILE_LOAD(6, panel + (s * 2) * 256, 64);
                TILE_LOAD(7, panel + (s * 2 + 1) * 256, 64);
                TILE_DP(0, 4, 6);
                TILE_DP(1, 4, 7);
                TILE_DP(2, 5, 6);
                TILE_DP(3, 5, 7);
            }
            /* C tile (a, b): tokens i + 16a.., outputs j + 16b.. */
            if (full_m && i + AMX_N <= n) {
                float *y = J->y + i * m + j;
                TILE_STORE(0, y, m * 4);
                TILE_STORE(1, y + 16, m * 4);
                TILE_STORE(2, y + 16 * m, m * 4);
                TILE_STORE(3, y + 16 * m + 16, m * 4);
                continue;
            }
            for (int t = 0; t < 4; t++) { /* an edge: through the scratch tile */
                int64_t ti = i + 16 * (t >> 1), tj = j + 16 * (t & 1);
                switch (t) {
                case 0: TILE_STORE(0, ctile, 64); break;
                case 1: TILE_STORE(1, ctile, 64); break;
                case 2: TILE_STORE(2, ctile, 64); break;
                default: TILE_STORE(3, ctile, 64); break;
                }
                for (int r = 0; r < 16 && ti + r < n; r++)
                    for (int c = 0; c < 16 && tj + c < m1; c++)
                        J->y[(ti + r) * m + tj + c] = ctile[r * 16 + c];
            }
        }
    }
    TILE_RELEASE();
}
