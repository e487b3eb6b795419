// The bf16 dot-product GEMM: y = bf16(x) · wᵀ for bf16 weights (M, K) read
// in place, with f32 accumulation, on AVX512-BF16 (`vdpbf16ps`, 32 products
// per instruction, twice the rate of f32 FMA). This is the prefill path of
// `linear` for bf16 checkpoints; decode keeps the exact f32 GEMV of gemv.hpp.
//
// Arithmetic: the activations are rounded to bf16 (nearest-even) once per
// call, then every product of two bf16 numbers is exact in f32 and the sums
// are f32 — so the result equals the exact product of bf16(x) and w up to
// f32 summation error, and differs from the f32-activation product by the
// activation rounding (relative 2^-9 per element, averaging out over K).
// `vdpbf16ps` flushes denormals to zero, which at bf16's f32 exponent range
// only touches values below 1e-38.
//
// Layout and blocking: activations are converted into a zero-padded buffer
// of row length round_up(K, 32), so only the weights need masked tail loads.
// The microkernel holds 4 weight rows × 4 activation rows of accumulators
// (16 zmm), steps K by 32, and reduces each accumulator horizontally at the
// end. Around it, a chunk of weight rows and a block of activation rows are
// sized to stay in L2 while the other operand streams over them.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/gemv.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>

namespace dsv2::cpu_detail {

// Row length of the bf16 activation buffer: K rounded up to 32 elements.
inline std::int64_t bf16_row_length(std::int64_t k) { return (k + 31) / 32 * 32; }

#if DSV2_X86_KERNELS
#define DSV2_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

inline bool has_avx512_bf16() {
    static const bool ok = has_avx512() && __builtin_cpu_supports("avx512bf16");
    return ok;
}

// Rows [i0, i1) of x (f32, (N, K)) into xb (bf16, (N, ldb) with ldb =
// bf16_row_length(K)), rounded to nearest even, the padding zeroed.
DSV2_AVX512BF16 inline void to_bf16_rows(const float* x, std::int64_t ldx, std::int64_t k, std::int64_t i0,
                                         std::int64_t i1, bf16* xb, std::int64_t ldb) {
    for (std::int64_t i = i0; i < i1; ++i) {
        const float* src = x + i * ldx;
        auto* dst = reinterpret_cast<__m512i*>(xb + i * ldb);
        for (std::int64_t j = 0; j < ldb; j += 32, ++dst) {
            // cvtne2ps puts its second operand in the low half.
            const std::int64_t left = k - j;
            const auto mask = [](std::int64_t lanes) {
                return static_cast<__mmask16>((1u << std::clamp<std::int64_t>(lanes, 0, 16)) - 1u);
            };
            const __mmask16 lo = mask(left), hi = mask(left - 16);
            const __m512 a = _mm512_maskz_loadu_ps(lo, src + j);
            const __m512 b = _mm512_maskz_loadu_ps(hi, src + j + 16);
            _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));
        }
    }
}

// Sums of four accumulators, in order, as four lanes. (The zero-masked
// forms keep GCC 12's -Wuninitialized quiet, as in gemv.hpp.)
DSV2_AVX512BF16 inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    constexpr __mmask16 all16 = 0xffff;
    constexpr __mmask8 all8 = 0xff;
    // Per 128-bit lane: a b a b, then a b c d, then the four lanes added.
    const __m512 ab = _mm512_add_ps(_mm512_maskz_unpacklo_ps(all16, a, b), _mm512_maskz_unpackhi_ps(all16, a, b));
    const __m512 cd = _mm512_add_ps(_mm512_maskz_unpacklo_ps(all16, c, d), _mm512_maskz_unpackhi_ps(all16, c, d));
    const __m512d ab2 = _mm512_castps_pd(ab), cd2 = _mm512_castps_pd(cd);
    const __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_maskz_unpacklo_pd(all8, ab2, cd2)),
                                      _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(all8, ab2, cd2)));
    const __m512 half = _mm512_add_ps(abcd, _mm512_maskz_shuffle_f32x4(all16, abcd, abcd, 0x4e));  // lanes 2 3 0 1
    const __m512 sum = _mm512_add_ps(half, _mm512_maskz_shuffle_f32x4(all16, half, half, 0xb1));   // lanes 1 0 3 2
    return _mm512_maskz_extractf32x4_ps(0xf, sum, 0);
}

// y[i, r] for MR weight rows × NR activation rows (both ≤ 4): the tile of
// accumulators stays in registers over the whole of K.
template <int MR, int NR>
DSV2_AVX512BF16 inline void dot_tile(const bf16* xb, std::int64_t ldb, const bf16* w, std::int64_t ldw,
                                     std::int64_t k, float* y, std::int64_t ldy) {
    static_assert(MR >= 1 && MR <= 4 && NR >= 1 && NR <= 4);
    __m512 acc[NR][4];
    for (int i = 0; i < NR; ++i)
        for (int r = 0; r < 4; ++r) acc[i][r] = _mm512_setzero_ps();
    const std::int64_t kv = k / 32 * 32;
    std::int64_t j = 0;
    for (; j < kv; j += 32) {
        __m512bh wv[MR];
        for (int r = 0; r < MR; ++r) wv[r] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + r * ldw + j));
        for (int i = 0; i < NR; ++i) {
            const auto xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + i * ldb + j));
            for (int r = 0; r < MR; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv, wv[r]);
        }
    }
    if (j < k) {
        // Masked weights: the activation buffer is already zero past K, but
        // the bytes past a weight row could hold Inf or NaN patterns.
        const auto tail = static_cast<__mmask32>((std::uint64_t{1} << (k - j)) - 1u);
        __m512bh wv[MR];
        for (int r = 0; r < MR; ++r)
            wv[r] = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, w + r * ldw + j));
        for (int i = 0; i < NR; ++i) {
            const auto xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + i * ldb + j));
            for (int r = 0; r < MR; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv, wv[r]);
        }
    }
    for (int i = 0; i < NR; ++i) {
        const __m128 s = hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
        if constexpr (MR == 4) {
            _mm_storeu_ps(y + i * ldy, s);
        } else {
            _mm_mask_storeu_ps(y + i * ldy, static_cast<__mmask8>((1u << MR) - 1u), s);
        }
    }
}

// All n activation rows against weight rows [r0, r1), in MR-row strips.
template <int MR>
DSV2_AVX512BF16 inline void dot_strip(const bf16* xb, std::int64_t ldb, std::int64_t n, const bf16* w,
                                      std::int64_t ldw, std::int64_t k, float* y, std::int64_t ldy) {
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) dot_tile<MR, 4>(xb + i * ldb, ldb, w, ldw, k, y + i * ldy, ldy);
    switch (n - i) {
        case 3: dot_tile<MR, 3>(xb + i * ldb, ldb, w, ldw, k, y + i * ldy, ldy); break;
        case 2: dot_tile<MR, 2>(xb + i * ldb, ldb, w, ldw, k, y + i * ldy, ldy); break;
        case 1: dot_tile<MR, 1>(xb + i * ldb, ldb, w, ldw, k, y + i * ldy, ldy); break;
        default: break;
    }
}

// y[i, r] = Σ_j xb[i, j] · w[r, j] for i in [0, n), r in [r0, r1).
// xb comes from to_bf16_rows (row length ldb, zero past k).
DSV2_AVX512BF16 inline void gemm_bf16_rows(const bf16* xb, std::int64_t ldb, std::int64_t n, const bf16* w,
                                           std::int64_t ldw, std::int64_t k, std::int64_t r0, std::int64_t r1,
                                           float* y, std::int64_t ldy) {
    // L2 budgets (bytes): a chunk of weight rows is reused by every
    // activation block; each activation block is re-read by every 4-row strip.
    constexpr std::int64_t kWeightBytes = 256 << 10, kActBytes = 512 << 10;
    const std::int64_t row_bytes = 2 * ldb;
    const std::int64_t chunk = std::max<std::int64_t>(4, kWeightBytes / row_bytes / 4 * 4);
    const std::int64_t nb = std::max<std::int64_t>(4, kActBytes / row_bytes / 4 * 4);
    for (std::int64_t c0 = r0; c0 < r1; c0 += chunk) {
        const std::int64_t c1 = std::min(r1, c0 + chunk);
        for (std::int64_t i0 = 0; i0 < n; i0 += nb) {
            const std::int64_t ni = std::min(n, i0 + nb) - i0;
            const bf16* xi = xb + i0 * ldb;
            float* yi = y + i0 * ldy;
            std::int64_t r = c0;
            for (; r + 4 <= c1; r += 4) dot_strip<4>(xi, ldb, ni, w + r * ldw, ldw, k, yi + r, ldy);
            switch (c1 - r) {
                case 3: dot_strip<3>(xi, ldb, ni, w + r * ldw, ldw, k, yi + r, ldy); break;
                case 2: dot_strip<2>(xi, ldb, ni, w + r * ldw, ldw, k, yi + r, ldy); break;
                case 1: dot_strip<1>(xi, ldb, ni, w + r * ldw, ldw, k, yi + r, ldy); break;
                default: break;
            }
        }
    }
}

// The calling thread's activation buffer, 64-byte aligned so that every
// K step is one cache line; it grows to the largest call and is kept.
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

#else
inline bool has_avx512_bf16() { return false; }
#endif  // DSV2_X86_KERNELS

// y = bf16(x) · wᵀ: x (n, k) f32, w (m, k) bf16, y (n, m) f32, rows given by
// their leading dimensions. Threads share the conversion of x, then take
// blocks of output features (several per thread, for balance). Returns false,
// doing nothing, where the CPU lacks AVX512-BF16: the caller falls back.
inline bool try_gemm_bf16(Context<cpu>& ctx, const float* x, std::int64_t ldx, std::int64_t n, const bf16* w,
                          std::int64_t ldw, std::int64_t m, std::int64_t k, float* y, std::int64_t ldy, bool parallel) {
#if DSV2_X86_KERNELS
    if (!has_avx512_bf16()) return false;
    const std::int64_t ldb = bf16_row_length(k);
    bf16* xb = bf16_scratch(n * ldb);
    const int threads = parallel ? ctx.threads : 1;
    const std::int64_t per = (m + 4 * threads - 1) / (4 * threads);
    const std::int64_t block = std::max<std::int64_t>(16, (per + 15) / 16 * 16);
    const std::int64_t blocks = (m + block - 1) / block;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
#pragma omp for schedule(static)
        for (std::int64_t i = 0; i < n; ++i) to_bf16_rows(x, ldx, k, i, i + 1, xb, ldb);
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t b = 0; b < blocks; ++b)
            gemm_bf16_rows(xb, ldb, n, w, ldw, k, b * block, std::min(m, (b + 1) * block), y, ldy);
    }
    return true;
#else
    (void)ctx, (void)x, (void)ldx, (void)n, (void)w, (void)ldw, (void)m, (void)k, (void)y, (void)ldy, (void)parallel;
    return false;
#endif
}

}  // namespace dsv2::cpu_detail
