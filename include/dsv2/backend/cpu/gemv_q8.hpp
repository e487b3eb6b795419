// Decode products with int8 weights through AVX-512 VNNI. Widening every
// int8 weight to f32 (gemv.hpp) costs three vector instructions per 16
// weights, and measured on our machines that caps one core at ~7.5 G weights/s,
// below its memory bandwidth. Here each f32 activation row x is split into two
// 8-bit digits of a 16-bit fixed-point value,
//     x_j ≈ s_x · X_j,  X_j = round(x_j / s_x) ∈ [-32767, 32767],  s_x = max|x| / 32767,
//     X_j = 256 · h_j + l_j,  h_j ∈ [-128, 127],  l_j ∈ [0, 255],
// and vpdpbusd (u8 × s8, four products summed into an int32 lane) computes
// Σ l_j q_j and Σ (h_j + 128) q_j exactly in integers; Σ q_j corrects the +128.
// Then y_r = s_r · s_x · (256 · (Σ (h+128) q − 128 Σ q) + Σ l q).
//
// The only rounding is X_j: |x_j − s_x X_j| ≤ s_x / 2, i.e. 2^-16 of the row's
// largest activation — some 250 times below the int8 rounding of the weights
// themselves (half a step of 1/127 of the row's largest weight), so the
// product is as accurate as weight-only int8 allows (tests/test_quant.cpp).
#pragma once

#include "dsv2/backend/cpu/gemv.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace dsv2::cpu_detail {

// One activation row as its two digit planes, zero-padded to a multiple of 64.
struct Q8Digits {
    std::vector<std::uint8_t> hi, lo;  // h + 128, l
    float scale = 0;                   // s_x
};

// The digits of one row, in plain C++: the definition that the vector split
// below is tested against. False, leaving d unspecified, when the row holds
// a NaN or an infinity: there is no fixed-point scale for it, and the
// caller's f32 path propagates it.
inline bool split_digits_reference(const float* x, std::int64_t k, Q8Digits& d) {
    const std::int64_t padded = (k + 63) / 64 * 64;
    d.hi.assign(static_cast<std::size_t>(padded), 128);  // h = 0 (the +128 is corrected exactly)
    d.lo.assign(static_cast<std::size_t>(padded), 0);
    float amax = 0;
    for (std::int64_t j = 0; j < k; ++j) {
        if (!std::isfinite(x[j])) return false;
        amax = std::max(amax, std::abs(x[j]));
    }
    d.scale = amax > 0 ? amax / 32767.0f : 1.0f;
    const float inv = 1.0f / d.scale;
    for (std::int64_t j = 0; j < k; ++j) {
        const auto v = static_cast<std::int32_t>(std::clamp(std::nearbyint(x[j] * inv), -32767.0f, 32767.0f));
        const std::int32_t h = v >> 8;  // floor(v / 256), so l = v - 256 h is in [0, 255]
        d.hi[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(h + 128);
        d.lo[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(v - 256 * h);
    }
    return true;
}

#if DSV2_X86_KERNELS
// The same digits, 16 lanes at a time (bit-identical: the same f32 product,
// rounded to nearest even, clamped), as the VNNI kernel's callers use them
// (VNNI implies AVX-512). Decode splits every activation row of every int8
// product, so the scalar loop's libm calls showed in profiles.
// (Zero-masked forms for GCC 12's -Wmaybe-uninitialized, as in gemv.hpp.)
DSV2_AVX512 inline bool split_digits_avx512(const float* x, std::int64_t k, Q8Digits& d) {
    const std::int64_t padded = (k + 63) / 64 * 64;
    d.hi.resize(static_cast<std::size_t>(padded));
    d.lo.resize(static_cast<std::size_t>(padded));
    __m512 amax = _mm512_setzero_ps();
    __mmask16 non_finite = 0;
    const __m512i all_ones_exponent = _mm512_set1_epi32(0x7f800000);
    for (std::int64_t j = 0; j < k; j += 16) {
        const __mmask16 m = lanes_mask(k - j);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        const __m512i exponent = _mm512_and_si512(_mm512_castps_si512(v), all_ones_exponent);
        non_finite |= _mm512_mask_cmpeq_epi32_mask(m, exponent, all_ones_exponent);  // NaN or ±Inf
        amax = _mm512_maskz_max_ps(0xffff, amax, _mm512_abs_ps(v));
    }
    if (non_finite) return false;
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, amax);
    const float a = *std::max_element(lanes, lanes + 16);
    d.scale = a > 0 ? a / 32767.0f : 1.0f;
    const __m512 inv = _mm512_set1_ps(1.0f / d.scale);
    const __m512i bound = _mm512_set1_epi32(32767), offset = _mm512_set1_epi32(128), low = _mm512_set1_epi32(255);
    for (std::int64_t j = 0; j < padded; j += 16) {
        // Lanes past k load as 0: digits h + 128 = 128, l = 0, as above.
        const __m512 v = _mm512_maskz_loadu_ps(lanes_mask(k - j), x + j);
        __m512i q = _mm512_maskz_cvt_roundps_epi32(0xffff, _mm512_mul_ps(v, inv),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_maskz_max_epi32(0xffff, _mm512_maskz_min_epi32(0xffff, q, bound),
                                   _mm512_sub_epi32(_mm512_setzero_si512(), bound));
        const __m512i h = _mm512_maskz_srai_epi32(0xffff, q, 8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d.hi.data() + j),
                         _mm512_maskz_cvtepi32_epi8(0xffff, _mm512_add_epi32(h, offset)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d.lo.data() + j),
                         _mm512_maskz_cvtepi32_epi8(0xffff, _mm512_and_si512(q, low)));
    }
    return true;
}
#endif

// Longer rows fall back to gemv.hpp: past ~1M the int32 lanes could wrap.
inline constexpr std::int64_t kQ8VnniMaxK = std::int64_t{1} << 20;

#if DSV2_X86_KERNELS
#define DSV2_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// (Not hsum_epi32: GCC 12's version trips -Wmaybe-uninitialized.)
DSV2_AVX512 inline std::int64_t hsum_epi32(__m512i v) {
    alignas(64) std::int32_t t[16];
    _mm512_store_si512(t, v);
    std::int64_t s = 0;
    for (std::int32_t e : t) s += e;
    return s;
}

inline bool has_avx512_vnni() {
    static const bool ok = has_avx512() && __builtin_cpu_supports("avx512vnni");
    return ok;
}

// acc += Σ of 4 products u8 · s8 per 32-bit lane, in place. Through the
// intrinsic, GCC 12 copied each accumulator of the q8 MLA score loop out and
// back around every vpdpbusd (and spilled an operand); the asm ties the
// accumulator to its register. (In the value loop the intrinsic compiles
// clean and the asm made GCC keep the accumulators in memory.)
DSV2_AVX512_VNNI inline void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
#if defined(__GNUC__) && !defined(__clang__)
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
#else
    acc = _mm512_dpbusd_epi32(acc, u8, s8);
#endif
}

// One weight row's integer sums against one activation row's digits:
// Σ (h+128) q, Σ l q and Σ q, the last riding along in the same pass rather
// than reading the row twice.
struct Q8Sums {
    __m512i h, l, q;
    DSV2_AVX512_VNNI Q8Sums() : h(_mm512_setzero_si512()), l(h), q(h) {}
    DSV2_AVX512_VNNI void add(__m512i hi, __m512i lo, __m512i w) {
        h = _mm512_dpbusd_epi32(h, hi, w);
        l = _mm512_dpbusd_epi32(l, lo, w);
        q = _mm512_dpbusd_epi32(q, _mm512_set1_epi8(1), w);
    }
};

// Rows [r0, r1) of y (n rows of activations, as digits) = s_r · x · q_rᵀ.
DSV2_AVX512_VNNI inline void gemv_rows_q8_vnni(const Q8Digits* x, std::int64_t n, const std::int8_t* q,
                                               std::int64_t ldq, std::int64_t k, std::int64_t r0, std::int64_t r1,
                                               const float* scales, float* y, std::int64_t ldy) {
    if (r0 >= r1) return;
    const std::int64_t kv = k / 64 * 64;
    const __mmask64 tail = k > kv ? (~0ull >> (64 - (k - kv))) : 0;
    StreamAhead ahead{reinterpret_cast<const char*>(q), r0 * ldq, (r1 - 1) * ldq + k};  // gemv.hpp
    for (std::int64_t r = r0; r < r1; ++r) {
        const std::int8_t* qr = q + r * ldq;
        for (std::int64_t i = 0; i < n; ++i) {
            const std::uint8_t* hi = x[i].hi.data();
            const std::uint8_t* lo = x[i].lo.data();
            // Two sets of sums, even and odd lines, so that cached rows are
            // not held up by vpdpbusd's latency.
            Q8Sums even, odd;
            std::int64_t j = 0;
            for (; j + 128 <= kv; j += 128) {
                ahead.upto(r * ldq + j);
                even.add(_mm512_loadu_si512(hi + j), _mm512_loadu_si512(lo + j), _mm512_loadu_si512(qr + j));
                odd.add(_mm512_loadu_si512(hi + j + 64), _mm512_loadu_si512(lo + j + 64),
                        _mm512_loadu_si512(qr + j + 64));
            }
            if (j < kv) even.add(_mm512_loadu_si512(hi + j), _mm512_loadu_si512(lo + j), _mm512_loadu_si512(qr + j));
            if (tail)
                odd.add(_mm512_loadu_si512(hi + kv), _mm512_loadu_si512(lo + kv), _mm512_maskz_loadu_epi8(tail, qr + kv));
            // In double: 256 · Σ h q can pass 2^31 for long rows. (Each
            // int32 lane holds at most k / 64 steps: see kQ8VnniMaxK.)
            const double hs = static_cast<double>(hsum_epi32(_mm512_add_epi32(even.h, odd.h))) -
                              128.0 * static_cast<double>(hsum_epi32(_mm512_add_epi32(even.q, odd.q)));
            const double dot = 256.0 * hs + static_cast<double>(hsum_epi32(_mm512_add_epi32(even.l, odd.l)));
            y[i * ldy + r] = static_cast<float>(static_cast<double>(scales[r]) * x[i].scale * dot);
        }
    }
}
#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
