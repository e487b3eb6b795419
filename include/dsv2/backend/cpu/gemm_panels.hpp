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
// each tile of 12 rows is widened into a per-thread f32 buffer (at most a
// few hundred KB: L2) and multiplied against every panel, two at a time: 12
// broadcast weights × 2 panel vectors = 24 zmm accumulators, no horizontal
// sums, the 12 × 32 tile transposed into y at the end. Many activation rows
// take K in blocks (k_block), so that the panels stay in L2.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/cpu/scratch.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace dsv2::cpu_detail {

// Rows of activations per panel and of weights per tile (see above).
inline constexpr std::int64_t kPanelRows = 16, kTileWeights = 12;

// Columns of K per block: as many as keep the panels' share within 1 MiB
// (half of a 2 MiB L2), at least 256. Few activation rows (an expert's
// tokens) take all of K in one block, so each output is written once.
inline std::int64_t k_block(std::int64_t n, std::int64_t k) {
    constexpr std::int64_t kPanelBytes = std::int64_t{1} << 20;
    const std::int64_t rows = (n + kPanelRows - 1) / kPanelRows * kPanelRows;
    return std::min(k, std::max<std::int64_t>(256, kPanelBytes / (rows * 4) / 16 * 16));
}

#if DSV2_X86_KERNELS

// The 12 × (16 · P) tile: acc[r][c] lane t = Σ_p w[r, p] · panel c's x[t, p].
template <int P>
DSV2_AVX512 inline void panel_tile(const float* panels, std::int64_t panel_stride, std::int64_t k, const float* w,
                                   std::int64_t ldw, float* tile) {
    static_assert(P == 1 || P == 2);
    __m512 acc[kTileWeights][P];
    for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
    for (std::int64_t p = 0; p < k; ++p) {
        __m512 x[P];
        for (int c = 0; c < P; ++c) x[c] = _mm512_load_ps(panels + c * panel_stride + p * kPanelRows);
#pragma GCC unroll 12
        for (int r = 0; r < kTileWeights; ++r) {
            const __m512 wv = _mm512_set1_ps(w[r * ldw + p]);
            for (int c = 0; c < P; ++c) acc[r][c] = _mm512_fmadd_ps(x[c], wv, acc[r][c]);
        }
    }
    for (int r = 0; r < kTileWeights; ++r)
        for (int c = 0; c < P; ++c) _mm512_store_ps(tile + (r * P + c) * kPanelRows, acc[r][c]);
}

// Columns [0, k) of `rows` weight rows (16-bit or int8) widened to f32 rows
// of ld, zero past k and in rows [rows, 12).
template <class T>
DSV2_AVX512 inline void widen_tile(const T* w, std::int64_t ldw, std::int64_t rows, std::int64_t k, float* dst,
                                   std::int64_t ld) {
    for (std::int64_t r = 0; r < kTileWeights; ++r) {
        float* out = dst + r * ld;
        if (r >= rows) {
            std::fill(out, out + ld, 0.0f);
            continue;
        }
        widen_f32_avx512(w + r * ldw, out, k);
        std::fill(out + k, out + ld, 0.0f);
    }
}

// Rows [r0, r1) of the output against every activation row, `block`
// (k_block) columns of K at a time (the panels' share of those stays in L2
// while every tile of the block passes over it); `buffer` holds one widened
// tile (12 × round_up(block, 16) floats).
template <class T>
DSV2_AVX512 void gemm_panels_rows(const float* panels, std::int64_t n, std::int64_t k, std::int64_t block, const T* w,
                                  std::int64_t ldw, const float* scales, std::int64_t r0, std::int64_t r1,
                                  float* buffer, float* y, std::int64_t ldy) {
    const std::int64_t panel_stride = k * kPanelRows, n_panels = (n + kPanelRows - 1) / kPanelRows;
    alignas(64) float tile[kTileWeights * 2 * kPanelRows];
    for (std::int64_t k0 = 0; k0 < k; k0 += block) {
        const std::int64_t kc = std::min(block, k - k0), ld = (kc + 15) / 16 * 16;
        const bool first = k0 == 0, last = k0 + kc == k;
        for (std::int64_t r = r0; r < r1; r += kTileWeights) {
            const std::int64_t rows = std::min(kTileWeights, r1 - r);
            widen_tile(w + r * ldw + k0, ldw, rows, kc, buffer, ld);
            for (std::int64_t c = 0; c < n_panels; c += 2) {
                const int width = n_panels - c >= 2 ? 2 : 1;
                const float* pc = panels + c * panel_stride + k0 * kPanelRows;
                if (width == 2) {
                    panel_tile<2>(pc, panel_stride, kc, buffer, ld, tile);
                } else {
                    panel_tile<1>(pc, panel_stride, kc, buffer, ld, tile);
                }
                const std::int64_t t0 = c * kPanelRows, t1 = std::min(n, t0 + width * kPanelRows);
                for (std::int64_t t = t0; t < t1; ++t) {
                    const std::int64_t lane = t - t0;  // lane / 16 is the panel, lane % 16 its row
                    float* out = y + t * ldy + r;
                    for (std::int64_t i = 0; i < rows; ++i) {
                        float v = tile[(i * width + lane / kPanelRows) * kPanelRows + lane % kPanelRows];
                        if (!first) v += out[i];
                        out[i] = last && scales ? v * scales[r + i] : v;
                    }
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
        for (std::int64_t i = 0; i < n_panels * kPanelRows; ++i) {
            float* dst = panels + (i / kPanelRows) * panel_stride + i % kPanelRows;
            const float* src = x + i * ldx;
            if (i < n) {
                for (std::int64_t p = 0; p < k; ++p) dst[p * kPanelRows] = src[p];
            } else {
                for (std::int64_t p = 0; p < k; ++p) dst[p * kPanelRows] = 0.0f;
            }
        }
        float* buffer = f32_scratch<kScratchWeightTile>(kTileWeights * ((k_step + 15) / 16 * 16));
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
