// The bf16 dot-product GEMM: y = bf16(x) · wᵀ for bf16 weights (M, K) read
// in place, or int8 weights with per-row scales widened to bf16 (exactly: an
// int8 has 8 significant bits), with f32 accumulation, on AVX512-BF16
// (`vdpbf16ps`, 32 products per instruction, twice the rate of f32 FMA).
// This is the prefill path of `linear` for bf16 and int8 weights; decode
// keeps the GEMV kernels of gemv.hpp and gemv_q8.hpp.
//
// Arithmetic: the activations are rounded to bf16 (nearest-even) once per
// call, then every product of two bf16 numbers is exact in f32 and the sums
// are f32 — so the result equals the exact product of bf16(x) and w up to
// f32 summation error, and differs from the f32-activation product by the
// activation rounding (relative 2^-9 per element, averaging out over K).
// Int8 outputs are multiplied by their row's scale once, at the end.
// `vdpbf16ps` flushes denormals to zero, which at bf16's f32 exponent range
// only touches values below 1e-38.
//
// Layout: the activations are packed once per call into panels of 16 rows,
// each step of a panel one zmm holding the 16 rows' pairs (x[i, 2p],
// x[i, 2p+1]); rows and columns past the edge are zero. The microkernel
// keeps 12 weight rows × 2 panels of accumulators (24 zmm): per column pair
// it loads 2 panel vectors, broadcasts each weight row's pair from memory
// and issues 24 `vdpbf16ps`. Every accumulator lane is one output, so there
// are no horizontal sums; the 12 × 32 tile is transposed into y at the end.
// The weights stream in place (12 rows of at most a few KB: L1/L2), the
// panels come from L2, and threads take blocks of weight rows.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/gemv.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>

namespace dsv2::cpu_detail {

// Rows of weights and activations per microkernel (see above).
inline constexpr std::int64_t kPanelRows = 16, kTileWeights = 12;

// Column pairs of a packed row: K rounded up to even, halved.
inline std::int64_t bf16_pairs(std::int64_t k) { return (k + 1) / 2; }

#if DSV2_X86_KERNELS
#define DSV2_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

inline bool has_avx512_bf16() {
    static const bool ok = has_avx512() && __builtin_cpu_supports("avx512bf16");
    return ok;
}

// Row i of x (f32, k values) rounded to bf16 pairs: 32 columns per step,
// masked at the tail; the 32-bit pair words go to out[p * stride] for each
// pair p (stride 16 in a panel). Columns past k are zero.
DSV2_AVX512BF16 inline void pack_bf16_row(const float* x, std::int64_t k, std::uint32_t* out, std::int64_t stride) {
    alignas(64) std::uint32_t words[16];
    for (std::int64_t j = 0; j < k; j += 32) {
        const std::int64_t left = k - j;
        const __m512 a = _mm512_maskz_loadu_ps(lanes_mask(left), x + j);
        const __m512 b = _mm512_maskz_loadu_ps(lanes_mask(left - 16), x + j + 16);
        // cvtne2ps puts its second operand in the low half: element 2p and
        // 2p+1 of the 32 become pair word p.
        _mm512_store_si512(words, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
        const std::int64_t pairs = std::min<std::int64_t>(16, (left + 1) / 2);
        std::uint32_t* dst = out + (j / 2) * stride;
        for (std::int64_t p = 0; p < pairs; ++p) dst[p * stride] = words[p];
    }
}

// Int8 rows widened to bf16 (exactly) into rows of ld (a multiple of 32)
// values, zero past k.
DSV2_AVX512BF16 inline void widen_q8_rows(const std::int8_t* q, std::int64_t ldq, std::int64_t rows, std::int64_t k,
                                          bf16* dst, std::int64_t ld) {
    for (std::int64_t r = 0; r < rows; ++r) {
        const std::int8_t* src = q + r * ldq;
        bf16* out = dst + r * ld;
        for (std::int64_t j = 0; j < ld; j += 32) {
            const std::int64_t left = k - j;
            const __m512 a = load16(src + j, lanes_mask(left));
            const __m512 b = load16(src + j + 16, lanes_mask(left - 16));
            _mm512_storeu_si512(out + j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
        }
    }
}

// The 12 × (16 · P) tile: acc[r][p] lane t = Σ over pairs of weight row r's
// pair times panel p's row t pair. Weight rows are read as 32-bit pair
// words, so a row must hold 2 * pairs readable values.
template <int P>
DSV2_AVX512BF16 inline void panel_tile(const bf16* panels, std::int64_t panel_stride, std::int64_t pairs,
                                       const bf16* w, std::int64_t ldw, float* tile) {
    static_assert(P == 1 || P == 2);
    __m512 acc[kTileWeights][P];
    for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
    for (std::int64_t p = 0; p < pairs; ++p) {
        __m512bh x[P];
        for (int c = 0; c < P; ++c)
            x[c] = reinterpret_cast<__m512bh>(_mm512_load_si512(panels + c * panel_stride + p * 2 * kPanelRows));
        for (int r = 0; r < kTileWeights; ++r) {
            std::uint32_t word;
            std::memcpy(&word, w + r * ldw + 2 * p, sizeof word);
            const auto wv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(word)));
            for (int c = 0; c < P; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x[c], wv);
        }
    }
    for (int r = 0; r < kTileWeights; ++r)
        for (int c = 0; c < P; ++c) _mm512_store_ps(tile + (r * P + c) * kPanelRows, acc[r][c]);
}

// Rows [r0, r1) of the output against every activation row. `rows_at(r,
// count)` returns {pointer, leading dimension} of 12 weight rows starting at
// row r, each holding 2 * pairs readable values (in place, or copied or
// widened into a per-thread buffer, zero-padded when fewer than 12 remain);
// scales (or null) multiply each output column.
template <class RowsAt>
DSV2_AVX512BF16 void gemm_bf16_panels(const bf16* panels, std::int64_t n, std::int64_t pairs, RowsAt&& rows_at,
                                      const float* scales, std::int64_t r0, std::int64_t r1, float* y, std::int64_t ldy) {
    const std::int64_t panel_stride = pairs * 2 * kPanelRows, n_panels = (n + kPanelRows - 1) / kPanelRows;
    alignas(64) float tile[kTileWeights * 2 * kPanelRows];
    for (std::int64_t r = r0; r < r1; r += kTileWeights) {
        const std::int64_t rows = std::min(kTileWeights, r1 - r);
        const auto [w, ldw] = rows_at(r, rows);
        for (std::int64_t c = 0; c < n_panels; c += 2) {
            const int width = n_panels - c >= 2 ? 2 : 1;
            if (width == 2) {
                panel_tile<2>(panels + c * panel_stride, panel_stride, pairs, w, ldw, tile);
            } else {
                panel_tile<1>(panels + c * panel_stride, panel_stride, pairs, w, ldw, tile);
            }
            const std::int64_t t0 = c * kPanelRows, t1 = std::min(n, t0 + width * kPanelRows);
            for (std::int64_t t = t0; t < t1; ++t) {
                const std::int64_t lane = t - t0;  // panel lane / 16 and lane % 16 index the tile
                float* out = y + t * ldy + r;
                for (std::int64_t i = 0; i < rows; ++i) {
                    const float v = tile[(i * width + lane / kPanelRows) * kPanelRows + lane % kPanelRows];
                    out[i] = scales ? v * scales[r + i] : v;
                }
            }
        }
    }
}

// The calling thread's bf16 buffer, 64-byte aligned; it grows to the
// largest request and is kept (one for the packed activations, one for
// widened weight rows).
template <int Slot>
inline bf16* bf16_scratch(std::int64_t elements) {
    struct Release {
        void operator()(bf16* p) const { Memory<cpu>::release(p); }
    };
    thread_local std::unique_ptr<bf16, Release> buf;
    thread_local std::int64_t size = 0;
    if (elements > size) {
        buf.reset();
        buf.reset(static_cast<bf16*>(Memory<cpu>::allocate(static_cast<std::size_t>(elements) * sizeof(bf16))));
        size = elements;
    }
    return buf.get();
}

// The shared driver: packs x (f32, (n, k)) into panels, then threads take
// blocks of output rows; make_rows_at() builds each thread's rows_at.
template <class MakeRowsAt>
void gemm_bf16(Context<cpu>& ctx, const float* x, std::int64_t ldx, std::int64_t n, std::int64_t m, std::int64_t k,
               const float* scales, float* y, std::int64_t ldy, bool parallel, MakeRowsAt&& make_rows_at) {
    const std::int64_t pairs = bf16_pairs(k), n_panels = (n + kPanelRows - 1) / kPanelRows;
    const std::int64_t panel_stride = pairs * 2 * kPanelRows;
    bf16* panels = bf16_scratch<0>(n_panels * panel_stride);
    const int threads = parallel ? ctx.threads : 1;
    // Blocks of whole tiles, several per thread for balance.
    const std::int64_t tiles = (m + kTileWeights - 1) / kTileWeights;
    const std::int64_t block = std::max<std::int64_t>(1, (tiles + 4 * threads - 1) / (4 * threads)) * kTileWeights;
    const std::int64_t blocks = (m + block - 1) / block;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static)
        for (std::int64_t i = 0; i < n_panels * kPanelRows; ++i) {
            auto* words = reinterpret_cast<std::uint32_t*>(panels + (i / kPanelRows) * panel_stride) + i % kPanelRows;
            if (i < n) {
                pack_bf16_row(x + i * ldx, k, words, kPanelRows);
            } else {
                for (std::int64_t p = 0; p < pairs; ++p) words[p * kPanelRows] = 0;
            }
        }
        auto rows_at = make_rows_at();
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t b = 0; b < blocks; ++b)
            gemm_bf16_panels(panels, n, pairs, rows_at, scales, b * block, std::min(m, (b + 1) * block), y, ldy);
    }
}

#else
inline bool has_avx512_bf16() { return false; }
#endif  // DSV2_X86_KERNELS

// y = bf16(x) · wᵀ: x (n, k) f32, w (m, k) bf16, y (n, m) f32, rows given by
// their leading dimensions. Returns false, doing nothing, where the CPU
// lacks AVX512-BF16: the caller falls back.
inline bool try_gemm_bf16(Context<cpu>& ctx, const float* x, std::int64_t ldx, std::int64_t n, const bf16* w,
                          std::int64_t ldw, std::int64_t m, std::int64_t k, float* y, std::int64_t ldy, bool parallel) {
#if DSV2_X86_KERNELS
    if (!has_avx512_bf16()) return false;
    const std::int64_t pairs = bf16_pairs(k), ld = 2 * pairs;
    gemm_bf16(ctx, x, ldx, n, m, k, nullptr, y, ldy, parallel, [&] {
        // Whole tiles of an even-K matrix are read in place; the last
        // partial tile, or every tile when K is odd (a pair word would run
        // past the row), is copied into a zero-padded buffer.
        return [&, buffer = bf16_scratch<1>(kTileWeights * ld)](std::int64_t r, std::int64_t rows) {
            if (rows == kTileWeights && k % 2 == 0) return std::pair<const bf16*, std::int64_t>(w + r * ldw, ldw);
            std::fill(buffer, buffer + kTileWeights * ld, bf16{});
            for (std::int64_t i = 0; i < rows; ++i) std::copy(w + (r + i) * ldw, w + (r + i) * ldw + k, buffer + i * ld);
            return std::pair<const bf16*, std::int64_t>(buffer, ld);
        };
    });
    return true;
#else
    (void)ctx, (void)x, (void)ldx, (void)n, (void)w, (void)ldw, (void)m, (void)k, (void)y, (void)ldy, (void)parallel;
    return false;
#endif
}

// y = bf16(x) · (diag(scales) q)ᵀ for int8 weights q (m, k): each tile of
// rows is widened to bf16 (exact) and the outputs scaled once.
inline bool try_gemm_q8_bf16(Context<cpu>& ctx, const float* x, std::int64_t ldx, std::int64_t n, const std::int8_t* q,
                             std::int64_t ldq, const float* scales, std::int64_t m, std::int64_t k, float* y,
                             std::int64_t ldy, bool parallel) {
#if DSV2_X86_KERNELS
    if (!has_avx512_bf16()) return false;
    const std::int64_t pairs = bf16_pairs(k), ld = (2 * pairs + 31) / 32 * 32;
    gemm_bf16(ctx, x, ldx, n, m, k, scales, y, ldy, parallel, [&] {
        return [&, buffer = bf16_scratch<1>(kTileWeights * ld)](std::int64_t r, std::int64_t rows) {
            if (rows < kTileWeights) std::fill(buffer, buffer + kTileWeights * ld, bf16{});
            widen_q8_rows(q + r * ldq, ldq, rows, k, buffer, ld);
            return std::pair<const bf16*, std::int64_t>(buffer, ld);
        };
    });
    return true;
#else
    (void)ctx, (void)x, (void)ldx, (void)n, (void)q, (void)ldq, (void)scales, (void)m, (void)k, (void)y, (void)ldy,
        (void)parallel;
    return false;
#endif
}

}  // namespace dsv2::cpu_detail
