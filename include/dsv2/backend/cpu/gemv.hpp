// Matrix-vector kernels for decode: f32 activations, weights in f32, bf16 or
// f16 read in place (no widened copy), f32 accumulation. Decode is
// memory-bound, so what matters is streaming each weight byte once at full
// bandwidth with every thread on its own slice of rows; the arithmetic is
// widen-and-FMA, exact in f32 whatever the weight type.
//
// The AVX-512 versions are compiled with __attribute__((target)) and chosen
// at run time, so the library needs no -march flag and runs anywhere; the
// portable loops are the fallback and the reference the tests compare with.
#pragma once

#include "dsv2/core/dtype.hpp"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define DSV2_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace dsv2::cpu_detail {

// Weight element types the kernels read in place.
template <class T>
inline constexpr bool gemv_weight_v = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;
// int8 (quantized weights, core/quantized.hpp) is read by the same kernels;
// its per-row scales are applied by the caller.

// Portable reference: y[i*ldy + r] = Σ_k x[i*ldx + k] · w[r*ldw + k], rows r in [r0, r1).
template <class T>
void gemv_rows_ref(const float* x, std::int64_t ldx, std::int64_t n, const T* w, std::int64_t ldw, std::int64_t k,
                   std::int64_t r0, std::int64_t r1, float* y, std::int64_t ldy) {
    for (std::int64_t r = r0; r < r1; ++r) {
        const T* wr = w + r * ldw;
        for (std::int64_t i = 0; i < n; ++i) {
            const float* xi = x + i * ldx;
            float acc = 0;
            for (std::int64_t j = 0; j < k; ++j) acc += xi[j] * convert<float>(wr[j]);
            y[i * ldy + r] = acc;
        }
    }
}

// Portable reference of the (K, M) layout: y[i*ldy + c] = Σ_k x[i*ldx + k] · w[k*ldw + c], columns c in [c0, c1).
template <class T>
void gemv_cols_ref(const float* x, std::int64_t ldx, std::int64_t n, const T* w, std::int64_t ldw, std::int64_t k,
                   std::int64_t c0, std::int64_t c1, float* y, std::int64_t ldy) {
    for (std::int64_t i = 0; i < n; ++i) {
        float* yi = y + i * ldy;
        for (std::int64_t c = c0; c < c1; ++c) yi[c] = 0;
        for (std::int64_t j = 0; j < k; ++j) {
            const float xv = x[i * ldx + j];
            const T* wr = w + j * ldw;
            for (std::int64_t c = c0; c < c1; ++c) yi[c] += xv * convert<float>(wr[c]);
        }
    }
}

#if DSV2_X86_KERNELS
#define DSV2_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
// The zero-masked ("maskz") forms below are deliberate: GCC 12's plain
// forms pass an uninitialised source that trips -Wmaybe-uninitialized.

DSV2_AVX512 inline float hsum(__m512 v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float s = 0;
    for (float e : t) s += e;
    return s;
}

// The first `lanes` of 16 (clamped to 0..16): the valid lanes of a tail.
inline __mmask16 lanes_mask(std::int64_t lanes) {
    return static_cast<__mmask16>((1u << std::clamp<std::int64_t>(lanes, 0, 16)) - 1u);
}

inline bool has_avx512() {
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl");
    return ok;
}

// 16 weights widened to f32, `mask` selecting the valid lanes of a tail.
template <class T>
DSV2_AVX512 inline __m512 load16(const T* p, __mmask16 mask) {
    if constexpr (std::is_same_v<T, float>) {
        return _mm512_maskz_loadu_ps(mask, p);
    } else if constexpr (std::is_same_v<T, std::int8_t>) {
        return _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_maskz_loadu_epi8(mask, p)));
    } else if constexpr (std::is_same_v<T, bf16>) {
        const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
        return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16));
    } else {
        return _mm512_maskz_cvtph_ps(0xffff, _mm256_maskz_loadu_epi16(mask, p));
    }
}
template <class T>
DSV2_AVX512 inline __m512 load16(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        return _mm512_loadu_ps(p);
    } else if constexpr (std::is_same_v<T, std::int8_t>) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return _mm512_maskz_cvtepi32_ps(0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, b));
    } else if constexpr (std::is_same_v<T, bf16>) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16));
    } else {
        return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
}

// How far ahead of the read decode asks for weight bytes. A kernel reads its
// rows one after another, so their bytes form one stream, and a cursor asks
// for each line this far before the read reaches it. Rows of a few KB are
// too short for the hardware prefetchers, which start over at every 4 KiB
// page. On the Zen 5 VM a 100-200 MB matrix streamed as fast as a plain
// read of its bytes with 8 KiB here: int8 74-79 GB/s against 43-54 for four
// interleaved rows with the next four prefetched, bf16 67-78 against 56-64
// (docs/benchmarks.md, 2026-11-29).
inline constexpr std::int64_t kStreamAheadBytes = 8192;

// The cursor over bytes [next, end) of `base`: upto(read) asks for every
// line before read + kStreamAheadBytes (and before end) not asked for yet.
// Offsets, not pointers, until a line is inside the range: no address past
// the matrix is ever formed.
struct StreamAhead {
    const char* base;
    std::int64_t next, end;
    void upto(std::int64_t read) {
        for (const std::int64_t want = std::min(end, read + kStreamAheadBytes); next < want; next += 64)
            _mm_prefetch(base + next, _MM_HINT_T0);
    }
};

// One weight row at a time against each activation row: the row (K
// elements) stays in L1 while the n activation rows pass over it, and the
// rows are read in memory order for StreamAhead. Two accumulators, even
// and odd vectors, so that a cached row is not held up by the FMA latency.
template <class T>
DSV2_AVX512 void gemv_rows_avx512(const float* x, std::int64_t ldx, std::int64_t n, const T* w, std::int64_t ldw,
                                  std::int64_t k, std::int64_t r0, std::int64_t r1, float* y, std::int64_t ldy) {
    if (r0 >= r1) return;
    constexpr std::int64_t bytes = sizeof(T);
    const std::int64_t k32 = k / 32 * 32;
    StreamAhead ahead{reinterpret_cast<const char*>(w), r0 * ldw * bytes, ((r1 - 1) * ldw + k) * bytes};
    for (std::int64_t r = r0; r < r1; ++r) {
        const T* wr = w + r * ldw;
        for (std::int64_t i = 0; i < n; ++i) {
            const float* xi = x + i * ldx;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            std::int64_t j = 0;
            for (; j < k32; j += 32) {
                ahead.upto((r * ldw + j) * bytes);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + j), load16(wr + j), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + j + 16), load16(wr + j + 16), a1);
            }
            for (; j < k; j += 16) {
                const __mmask16 m = lanes_mask(k - j);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xi + j), load16(wr + j, m), a0);
            }
            y[i * ldy + r] = hsum(_mm512_add_ps(a0, a1));
        }
    }
}

// (K, M) layout, columns [c, c + 16 V) of one activation row: V vectors of
// accumulators over the K rows. A row of the block is a short piece of a
// long row (W_UK of one head: 128 rows of 512 columns, 256 bytes of each
// read per block), so nothing streams for the hardware prefetchers; the
// block's rows are asked for kStreamAheadBytes of rows ahead (2.4x faster
// on the Zen 5 VM than without, from DRAM).
template <class T, int V>
DSV2_AVX512 inline void gemv_cols_block(const float* xi, const T* w, std::int64_t ldw, std::int64_t k, std::int64_t c,
                                        float* yi, bool prefetch) {
    constexpr std::int64_t segment = 16 * V * static_cast<std::int64_t>(sizeof(T));  // bytes of each row
    const std::int64_t row_bytes = ldw * static_cast<std::int64_t>(sizeof(T));
    const std::int64_t ahead = std::clamp<std::int64_t>(kStreamAheadBytes / std::max<std::int64_t>(row_bytes, 1), 4, 64);
    const char* base = reinterpret_cast<const char*>(w + c);
    auto ask = [&](std::int64_t j) {
        for (std::int64_t b = 0; b < segment; b += 64) _mm_prefetch(base + j * row_bytes + b, _MM_HINT_T0);
    };
    if (prefetch)
        for (std::int64_t j = 0; j < std::min(k, ahead); ++j) ask(j);
    __m512 acc[V];
    for (int v = 0; v < V; ++v) acc[v] = _mm512_setzero_ps();
    for (std::int64_t j = 0; j < k; ++j) {
        if (prefetch && j + ahead < k) ask(j + ahead);
        const __m512 xv = _mm512_set1_ps(xi[j]);
        const T* wr = w + j * ldw + c;
        for (int v = 0; v < V; ++v) acc[v] = _mm512_fmadd_ps(xv, load16(wr + 16 * v), acc[v]);
    }
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(yi + c + 16 * v, acc[v]);
}

// (K, M) layout: y[c0:c1] = Σ_k x[k] · w[k, c0:c1], 256 columns at a time
// (16 vectors of accumulators), then 64, then a masked 16.
template <class T>
DSV2_AVX512 void gemv_cols_avx512(const float* x, std::int64_t ldx, std::int64_t n, const T* w, std::int64_t ldw,
                                  std::int64_t k, std::int64_t c0, std::int64_t c1, float* y, std::int64_t ldy) {
    for (std::int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * ldx;
        float* yi = y + i * ldy;
        const bool prefetch = i == 0;  // later rows find the block in cache
        std::int64_t c = c0;
        for (; c + 256 <= c1; c += 256) gemv_cols_block<T, 16>(xi, w, ldw, k, c, yi, prefetch);
        for (; c + 64 <= c1; c += 64) gemv_cols_block<T, 4>(xi, w, ldw, k, c, yi, prefetch);
        for (; c < c1; c += 16) {
            const __mmask16 m = lanes_mask(c1 - c);
            __m512 a0 = _mm512_setzero_ps();
            for (std::int64_t j = 0; j < k; ++j)
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(xi[j]), load16(w + j * ldw + c, m), a0);
            _mm512_mask_storeu_ps(yi + c, m, a0);
        }
    }
}
#endif  // DSV2_X86_KERNELS

#if DSV2_X86_KERNELS
template <class T>
DSV2_AVX512 void widen_f32_avx512(const T* src, float* dst, std::int64_t n) {
    std::int64_t j = 0;
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(dst + j, load16(src + j));
    if (j < n) {
        const auto mask = static_cast<__mmask16>((1u << (n - j)) - 1u);
        _mm512_mask_storeu_ps(dst + j, mask, load16(src + j, mask));
    }
}
#endif

// dst[0, n) = src[0, n) as f32 (exact for every storage type but f64).
template <class T>
void widen_f32(const T* src, float* dst, std::int64_t n) {
#if DSV2_X86_KERNELS
    if constexpr (gemv_weight_v<T>) {
        if (has_avx512()) return widen_f32_avx512(src, dst, n);
    }
#endif
    for (std::int64_t j = 0; j < n; ++j) dst[j] = convert<float>(src[j]);
}

// The dispatching entry points.
template <class T>
void gemv_rows(const float* x, std::int64_t ldx, std::int64_t n, const T* w, std::int64_t ldw, std::int64_t k,
               std::int64_t r0, std::int64_t r1, float* y, std::int64_t ldy) {
#if DSV2_X86_KERNELS
    if (has_avx512()) return gemv_rows_avx512(x, ldx, n, w, ldw, k, r0, r1, y, ldy);
#endif
    gemv_rows_ref(x, ldx, n, w, ldw, k, r0, r1, y, ldy);
}
template <class T>
void gemv_cols(const float* x, std::int64_t ldx, std::int64_t n, const T* w, std::int64_t ldw, std::int64_t k,
               std::int64_t c0, std::int64_t c1, float* y, std::int64_t ldy) {
#if DSV2_X86_KERNELS
    if (has_avx512()) return gemv_cols_avx512(x, ldx, n, w, ldw, k, c0, c1, y, ldy);
#endif
    gemv_cols_ref(x, ldx, n, w, ldw, k, c0, c1, y, ldy);
}

}  // namespace dsv2::cpu_detail
