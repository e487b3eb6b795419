// The prefill GEMM: y = x · wᵀ (times per-row scales for int8) for f32
// activations x (n, k) and 16-bit or int8 weights w (m, k), in f32 FMAs on
// AVX-512. This is the path of `linear` for N > kGemvRows; decode keeps the
// GEMV kernels of gemv.hpp and gemv_q8.hpp.
//
// Arithmetic: every weight widens to f32 exactly (bf16, f16 and int8 all fit
// in an f32 significand), so the result is the exact product up to f32
// summation order: the activations are not rounded.
//
// Why f32 and not `vdpbf16ps`: on the CPUs we measure (docs/benchmarks.md)
// 512-bit f32 FMAs issue four times as often as bf16 dot products, twice the
// multiply-adds per second; where the two rates are equal (32 MACs a cycle
// on either), f32 costs only the widening of each weight tile.
//
// Layout: the activations are packed once per call into panels of 16 rows,
// column-major within a panel (step p of a panel is one zmm holding x[i, p]
// for its 16 rows; rows past n are zero). Threads take blocks of weight rows;
// each tile of 12 rows is widened into a per-thread f32 buffer (rows of a
// constant stride, in L2) and multiplied against every panel, two at a time:
// 12 broadcast weights × 2 panel vectors = 24 zmm accumulators, no
// horizontal sums, the 12 × 32 tile transposed into y at the end (16 × 16
// register transposes, one masked row of 12 per token). While a pass runs it
// prefetches the y lines it will add to and the next tile's weight rows
// (prefetch.hpp). Many activation rows take K in blocks (k_block), so that
// the panels stay in L2.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/cpu/prefetch.hpp"
#include "dsv2/backend/cpu/scratch.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace dsv2::cpu_detail {

// Rows of activations per panel and of weights per tile (see above).
inline constexpr std::int64_t kPanelRows = 16, kTileWeights = 12;

// Columns of K per block: as many as keep the panels' share within 1 MiB
// (half of a 2 MiB L2), at least 256 and at most kTileK. Few activation rows
// (an expert's tokens) take all of K (up to kTileK) in one block, so each
// output is written once.
inline constexpr std::int64_t kTileK = 2048;
inline std::int64_t k_block(std::int64_t n, std::int64_t k) {
    constexpr std::int64_t kPanelBytes = std::int64_t{1} << 20;
    const std::int64_t rows = (n + kPanelRows - 1) / kPanelRows * kPanelRows;
    return std::min({k, kTileK, std::max<std::int64_t>(256, kPanelBytes / (rows * 4) / 16 * 16)});
}

// Floats per row of a widened weight tile: a constant, so that the kernel
// reaches all 12 rows from one register (12 row pointers spill), and one
// line more than kTileK, so that the rows fall in different L1 sets (rows a
// multiple of 4 KiB apart share one).
inline constexpr std::int64_t kTileLd = kTileK + 16;

#if DSV2_X86_KERNELS

// What a pass of the kernel asks for while it runs: first the output lines
// its tile is added to (48 bytes in each of 32 rows of y), then
// the next weight tile's rows (from memory in a model: its weights are read
// once per forward).
template <class T>
struct TilePrefetch {
    RowPrefetcher<float> out;
    RowPrefetcher<T> next;
    void step() {
        if (out.address()) out.step();
        else next.step();
    }
};

// The 12 × (16 · P) tile: acc[r][c] lane t = Σ_p w[r, p] · panel c's x[t, p];
// the widened weights w are rows of kTileLd.
template <int P, class Prefetch>
DSV2_AVX512 inline void panel_tile(const float* panels, std::int64_t panel_stride, std::int64_t k, const float* w,
                                   float* tile, Prefetch& pf) {
    static_assert(P == 1 || P == 2);
    __m512 acc[kTileWeights][P];
    for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
    for (std::int64_t p = 0; p < k; ++p) {
        if (p % 2 == 0) pf.step();
        __m512 x[P];
        for (int c = 0; c < P; ++c) x[c] = _mm512_load_ps(panels + c * panel_stride + p * kPanelRows);
#pragma GCC unroll 12
        for (int r = 0; r < kTileWeights; ++r) {
            const __m512 wv = _mm512_set1_ps(w[r * kTileLd + p]);
            for (int c = 0; c < P; ++c) acc[r][c] = _mm512_fmadd_ps(x[c], wv, acc[r][c]);
        }
    }
    for (int r = 0; r < kTileWeights; ++r)
        for (int c = 0; c < P; ++c) _mm512_store_ps(tile + (r * P + c) * kPanelRows, acc[r][c]);
}

// Columns [0, k) of `rows` weight rows (16-bit or int8) widened to f32 rows
// of kTileLd floats; rows [rows, 12) are zero (the kernel reads columns
// below k only).
template <class T>
DSV2_AVX512 inline void widen_tile(const T* w, std::int64_t ldw, std::int64_t rows, std::int64_t k, float* dst) {
    for (std::int64_t r = 0; r < kTileWeights; ++r) {
        float* out = dst + r * kTileLd;
        if (r < rows) widen_f32_avx512(w + r * ldw, out, k);
        else std::fill(out, out + k, 0.0f);
    }
}

// The 16 x 16 transpose: v[i] lane j becomes v[j] lane i (pairs of lanes,
// then quads, then 128-bit quarters, then halves).
DSV2_AVX512 inline void transpose16(__m512 v[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_maskz_unpacklo_ps(0xffff, v[i], v[i + 1]);
        t[i + 1] = _mm512_maskz_unpackhi_ps(0xffff, v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // v[i + j]: in quarter q, column 4q + j of rows i..i+3
        v[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        v[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        v[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        v[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int j = 0; j < 4; ++j) {
        const __m512 a = _mm512_maskz_shuffle_f32x4(0xffff, v[j], v[4 + j], 0x44);
        const __m512 b = _mm512_maskz_shuffle_f32x4(0xffff, v[j], v[4 + j], 0xee);
        const __m512 c = _mm512_maskz_shuffle_f32x4(0xffff, v[8 + j], v[12 + j], 0x44);
        const __m512 d = _mm512_maskz_shuffle_f32x4(0xffff, v[8 + j], v[12 + j], 0xee);
        t[j] = _mm512_maskz_shuffle_f32x4(0xffff, a, c, 0x88);
        t[4 + j] = _mm512_maskz_shuffle_f32x4(0xffff, a, c, 0xdd);
        t[8 + j] = _mm512_maskz_shuffle_f32x4(0xffff, b, d, 0x88);
        t[12 + j] = _mm512_maskz_shuffle_f32x4(0xffff, b, d, 0xdd);
    }
    for (int i = 0; i < 16; ++i) v[i] = t[i];
}

// One panel's share of a kernel tile into y, a row of 12 at a time instead
// of 12 scattered floats: tile[i * ld + t] is output row t's column i
// (t < tokens, i < cols), added to y's value where `add` (a later block of
// K), then times scales[i] where given (int8 rows, after the last block).
DSV2_AVX512 inline void add_tile(const float* tile, std::int64_t ld, std::int64_t tokens, std::int64_t cols,
                                 bool add, const float* scales, float* y, std::int64_t ldy) {
    __m512 v[16];
    for (int i = 0; i < 16; ++i) v[i] = i < kTileWeights ? _mm512_load_ps(tile + i * ld) : _mm512_setzero_ps();
    transpose16(v);
    const __mmask16 m = lanes_mask(cols);
    const __m512 s = scales ? _mm512_maskz_loadu_ps(m, scales) : _mm512_set1_ps(1.0f);
    for (std::int64_t t = 0; t < tokens; ++t) {
        float* out = y + t * ldy;
        __m512 o = v[t];
        if (add) o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(m, out));
        if (scales) o = _mm512_mul_ps(o, s);
        _mm512_mask_storeu_ps(out, m, o);
    }
}

// Activation rows [0, min(rows, 16)) of x (k columns) into one panel:
// panel[p * 16 + t] = x[t, p], zero for t ≥ rows; 16 x 16 blocks transposed.
DSV2_AVX512 inline void pack_panel(const float* x, std::int64_t ldx, std::int64_t rows, std::int64_t k,
                                   float* panel) {
    __m512 v[16];
    for (std::int64_t p = 0; p < k; p += 16) {
        const __mmask16 m = lanes_mask(k - p);
        for (std::int64_t t = 0; t < 16; ++t)
            v[t] = t < rows ? _mm512_maskz_loadu_ps(m, x + t * ldx + p) : _mm512_setzero_ps();
        transpose16(v);
        for (std::int64_t q = 0; q < std::min<std::int64_t>(16, k - p); ++q)
            _mm512_store_ps(panel + (p + q) * kPanelRows, v[q]);
    }
}

// Rows [r0, r1) of the output against every activation row, `block`
// (k_block) columns of K at a time (the panels' share of those stays in L2
// while every tile of the block passes over it); `buffer` holds one widened
// tile (12 × kTileLd floats).
template <class T>
DSV2_AVX512 void gemm_panels_rows(const float* panels, std::int64_t n, std::int64_t k, std::int64_t block, const T* w,
                                  std::int64_t ldw, const float* scales, std::int64_t r0, std::int64_t r1,
                                  float* buffer, float* y, std::int64_t ldy) {
    const std::int64_t panel_stride = k * kPanelRows, n_panels = (n + kPanelRows - 1) / kPanelRows;
    alignas(64) float tile[kTileWeights * 2 * kPanelRows];
    TilePrefetch<T> pf;
    const T* next_rows[kTileWeights];
    const float* out_rows[2 * kPanelRows];
    for (std::int64_t k0 = 0; k0 < k; k0 += block) {
        const std::int64_t kc = std::min(block, k - k0);
        const bool first = k0 == 0, last = k0 + kc == k;
        for (std::int64_t r = r0; r < r1; r += kTileWeights) {
            const std::int64_t rows = std::min(kTileWeights, r1 - r);
            widen_tile(w + r * ldw + k0, ldw, rows, kc, buffer);
            // The next tile: the next rows of this block, else the first rows of the next block.
            const bool more_rows = r + kTileWeights < r1;
            const std::int64_t next_r = more_rows ? r + kTileWeights : r0, next_k0 = more_rows ? k0 : k0 + kc;
            const std::int64_t next_kc = std::clamp<std::int64_t>(k - next_k0, 0, block);
            const std::int64_t next_n = next_kc > 0 ? std::min(kTileWeights, r1 - next_r) : 0;
            for (std::int64_t i = 0; i < next_n; ++i) next_rows[i] = w + (next_r + i) * ldw + next_k0;
            pf.next.start(next_rows, next_n, next_kc);
            for (std::int64_t c = 0; c < n_panels; c += 2) {
                const int width = n_panels - c >= 2 ? 2 : 1;
                const float* pc = panels + c * panel_stride + k0 * kPanelRows;
                const std::int64_t t0 = c * kPanelRows, t1 = std::min(n, t0 + width * kPanelRows);
                for (std::int64_t t = t0; t < t1; ++t) out_rows[t - t0] = y + t * ldy + r;
                pf.out.start(out_rows, t1 - t0, rows);
                if (width == 2) {
                    panel_tile<2>(pc, panel_stride, kc, buffer, tile, pf);
                } else {
                    panel_tile<1>(pc, panel_stride, kc, buffer, tile, pf);
                }
                for (int c2 = 0; c2 < width; ++c2) {
                    const std::int64_t from = t0 + c2 * kPanelRows;
                    add_tile(tile + c2 * kPanelRows, width * kPanelRows, std::min(kPanelRows, t1 - from), rows,
                             !first, last && scales ? scales + r : nullptr, y + from * ldy + r, ldy);
                }
            }
        }
    }
}

#endif  // DSV2_X86_KERNELS

// y = x · (diag(scales) w)ᵀ: x (n, k) f32, w (m, k) bf16, f16 or int8,
// scales (m) or null, y (n, m) f32, rows given by their leading dimensions.
// Returns false, doing nothing, where the CPU lacks AVX-512: the caller
// falls back.
template <class T>
bool try_gemm_panels(Context<cpu>& ctx, const float* x, std::int64_t ldx, std::int64_t n, const T* w,
                     std::int64_t ldw, const float* scales, std::int64_t m, std::int64_t k, float* y, std::int64_t ldy,
                     bool parallel) {
#if DSV2_X86_KERNELS
    if (!has_avx512() || k == 0) return false;
    const std::int64_t n_panels = (n + kPanelRows - 1) / kPanelRows, panel_stride = k * kPanelRows;
    float* panels = f32_scratch<kScratchPanels>(n_panels * panel_stride);
    const std::int64_t k_step = k_block(n, k);
    const int threads = parallel ? ctx.threads : 1;
    // Blocks of whole tiles, several per thread for balance.
    const std::int64_t tiles = (m + kTileWeights - 1) / kTileWeights;
    const std::int64_t block = std::max<std::int64_t>(1, (tiles + 4 * threads - 1) / (4 * threads)) * kTileWeights;
    const std::int64_t blocks = (m + block - 1) / block;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static)
        for (std::int64_t c = 0; c < n_panels; ++c)
            pack_panel(x + c * kPanelRows * ldx, ldx, n - c * kPanelRows, k, panels + c * panel_stride);
        float* buffer = f32_scratch<kScratchWeightTile>(kTileWeights * kTileLd);
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t b = 0; b < blocks; ++b)
            gemm_panels_rows(panels, n, k, k_step, w, ldw, scales, b * block, std::min(m, (b + 1) * block), buffer, y,
                             ldy);
    }
    return true;
#else
    (void)ctx, (void)x, (void)ldx, (void)n, (void)w, (void)ldw, (void)scales, (void)m, (void)k, (void)y, (void)ldy,
        (void)parallel;
    return false;
#endif
}

}  // namespace dsv2::cpu_detail
