// bf16 dot products (`vdpbf16ps`, AVX512_BF16) on this CPU: whether it has
// them, whether they pay, and the bf16 pair words they read.
//
// Whether they pay is measured, not assumed: the Xeon of docs/benchmarks.md
// issues `vdpbf16ps` at a quarter of its FMA rate (half the multiply-adds of
// f32 FMAs), Zen 5 at nearly the FMA rate (1.85 times the multiply-adds).
// The same probe gives the benchmarks their FLOP roofline.
#pragma once

#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/core/dtype.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace dsv2::cpu_detail {

// The word of two lanes rounded to bf16 (ties to even), `lo` in the low half:
// what `vdpbf16ps` multiplies pairwise.
inline std::uint32_t bf16_pair(float lo, float hi) {
    return std::uint32_t{bf16(lo).bits} | std::uint32_t{bf16(hi).bits} << 16;
}

#if DSV2_X86_KERNELS

#define DSV2_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

inline bool has_avx512_bf16() {
    static const bool ok = has_avx512() && __builtin_cpu_supports("avx512bf16");
    return ok;
}

// Multiply-adds a second of one thread over `iters` steps of 16 independent
// chains of 512-bit bf16 dot products (32 multiply-adds each) or f32 FMAs
// (16 each), in registers only. The bf16 probe needs AVX512_BF16
// (has_avx512_bf16()), the f32 one AVX-512.
template <bool Bf16>
DSV2_AVX512_BF16 double peak_macs_per_s(std::int64_t iters) {
    constexpr int kChains = 16;
    __m512 acc[kChains];
    for (auto& c : acc) c = _mm512_setzero_ps();
    const __m512 a = _mm512_set1_ps(1e-3f);
    const auto t0 = std::chrono::steady_clock::now();
    // An opaque multiplicand keeps each loop. (A barrier on an accumulator
    // sends all sixteen through memory on every iteration, and the probe then
    // measures stores, not arithmetic.) The bf16 conversion stays inside the
    // bf16 branch: the f32 probe runs on CPUs without AVX512_BF16 too.
    if constexpr (Bf16) {
        auto ah = _mm512_cvtne2ps_pbh(a, a);
        const auto bh = ah;
        for (std::int64_t i = 0; i < iters; ++i) {
            __asm__ volatile("" : "+v"(ah));
#pragma GCC unroll 16
            for (auto& c : acc) c = _mm512_dpbf16_ps(c, ah, bh);
        }
    } else {
        __m512 av = a;
        for (std::int64_t i = 0; i < iters; ++i) {
            __asm__ volatile("" : "+v"(av));
#pragma GCC unroll 16
            for (auto& c : acc) c = _mm512_fmadd_ps(av, a, c);
        }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    __m512 sum = acc[0];
    for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, acc[c]);
    __asm__ volatile("" : : "v"(sum));  // the sums are used
    return s > 0 ? (Bf16 ? 32.0 : 16.0) * kChains * static_cast<double>(iters) / s : 0.0;
}

// Whether bf16 dot products pay here: the CPU has AVX512_BF16 and, measured
// once (the best of three probes of ~40 µs each), they do at least 1.5 times
// the multiply-adds of f32 FMAs.
inline bool bf16_dot_pays() {
    static const bool pays = [] {
        if (!has_avx512_bf16()) return false;
        constexpr std::int64_t iters = std::int64_t{1} << 14;
        double bf = 0, f32 = 0;
        for (int r = 0; r < 3; ++r) {
            bf = std::max(bf, peak_macs_per_s<true>(iters));
            f32 = std::max(f32, peak_macs_per_s<false>(iters));
        }
        return bf >= 1.5 * f32;
    }();
    return pays;
}

#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
