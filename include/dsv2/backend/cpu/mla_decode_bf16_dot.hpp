// The AVX512_BF16 kernel of MLA decode over a bf16 latent cache, for CPUs
// whose `vdpbf16ps` issues about as often as an f32 FMA (Zen 5: 7.8 against
// 8.5 G/s per core), so that its two multiply-adds per lane make it twice the
// f32 kernel's rate; mla_decode.hpp chooses it where bf16_dot_pays()
// (bf16_dot.hpp).
//
// Heads in lanes, as the int8 kernel (mla_decode_lanes.hpp): a zmm holds 16
// heads, so a key's score, its probability and each output channel are one
// vector, and no product needs a horizontal sum.
//   S = q Kᵀ   the query, times the softmax scale, is rounded to bf16 pairs
//              once per call (word h of pair j holds lanes 2j, 2j + 1 of head
//              h); each cached row's pairs, as they lie in the page, are
//              broadcast from memory by the instruction itself.
//   O += P V   the probabilities are rounded to bf16 and paired by rows
//              (word h of pair t holds rows 2t, 2t + 1 of head h); the tile's
//              rows are regrouped two rows to a word, and O = corr·O + acc.
//              The softmax sum adds the rounded probabilities, so they are
//              the weights the output is normalized by.
// `vdpbf16ps` multiplies exactly and adds in f32 (flushing denormals), so the
// results differ from attention over the cached rows in f32 by the rounding
// of q and P to bf16 (relative 2^-9 each, as the GPU's mma.sync kernel):
// docs/usage.md has the measured error.
// Needs an even row width and a rank that is a multiple of 32.
#pragma once

#include "dsv2/backend/cpu/bf16_dot.hpp"
#include "dsv2/backend/cpu/exp16.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/cpu/mla_decode_lanes.hpp"
#include "dsv2/backend/cpu/prefetch.hpp"
#include "dsv2/backend/cpu/scratch.hpp"
#include "dsv2/core/dtype.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace dsv2::cpu_detail {

// Rows per tile (a multiple of 8): 128 rows of V2 are 144 KiB of cache rows,
// read in place, and 128 KiB regrouped, both in L2.
inline constexpr std::int64_t kDotTile = 128;

#if DSV2_X86_KERNELS

// The query of one block of up to 16 heads, times `scale`, as bf16 pairs
// (w / 2, 16): word h of pair j holds lanes 2j (low half) and 2j + 1 of head h.
DSV2_AVX512 inline void prepare_bf16_query(const float* q, std::int64_t ldq, std::int64_t nh, std::int64_t w,
                                           float scale, std::uint32_t* pairs) {
    std::fill(pairs, pairs + w / 2 * kLaneHeads, 0u);
    for (std::int64_t h = 0; h < nh; ++h)
        for (std::int64_t j = 0; j < w / 2; ++j)
            pairs[j * kLaneHeads + h] = bf16_pair(q[h * ldq + 2 * j] * scale, q[h * ldq + 2 * j + 1] * scale);
}

// a_k += q · (the bf16 pair at byte `at` of row r_k, broadcast), k in [0, 8).
DSV2_AVX512_BF16 inline void dpbf16_rows8(__m512& a0, __m512& a1, __m512& a2, __m512& a3, __m512& a4, __m512& a5,
                                          __m512& a6, __m512& a7, __m512 q, const bf16* const* r, std::int64_t at) {
#if defined(__GNUC__) && !defined(__clang__)
    // GCC does not see the 8 rows' words this reads, so it may move the
    // statement across stores: safe, as nothing writes the cache rows while
    // the kernel runs (a "memory" clobber would also pin the loads of q).
    asm("vdpbf16ps (%[r0],%[at])%{1to16%}, %[q], %[a0]\n\t"
        "vdpbf16ps (%[r1],%[at])%{1to16%}, %[q], %[a1]\n\t"
        "vdpbf16ps (%[r2],%[at])%{1to16%}, %[q], %[a2]\n\t"
        "vdpbf16ps (%[r3],%[at])%{1to16%}, %[q], %[a3]\n\t"
        "vdpbf16ps (%[r4],%[at])%{1to16%}, %[q], %[a4]\n\t"
        "vdpbf16ps (%[r5],%[at])%{1to16%}, %[q], %[a5]\n\t"
        "vdpbf16ps (%[r6],%[at])%{1to16%}, %[q], %[a6]\n\t"
        "vdpbf16ps (%[r7],%[at])%{1to16%}, %[q], %[a7]"
        : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6),
          [a7] "+v"(a7)
        : [q] "v"(q), [r0] "r"(r[0]), [r1] "r"(r[1]), [r2] "r"(r[2]), [r3] "r"(r[3]), [r4] "r"(r[4]),
          [r5] "r"(r[5]), [r6] "r"(r[6]), [r7] "r"(r[7]), [at] "r"(at));
#else
    __m512* a[8] = {&a0, &a1, &a2, &a3, &a4, &a5, &a6, &a7};
    for (int k = 0; k < 8; ++k) {
        std::uint32_t word;
        std::memcpy(&word, reinterpret_cast<const char*>(r[k]) + at, sizeof word);
        *a[k] = _mm512_dpbf16_ps(*a[k], (__m512bh)q, (__m512bh)_mm512_set1_epi32(static_cast<int>(word)));
    }
#endif
}

// a_i += p · (word i of v, broadcast), i in [0, 8).
DSV2_AVX512_BF16 inline void dpbf16_words8(__m512& a0, __m512& a1, __m512& a2, __m512& a3, __m512& a4, __m512& a5,
                                           __m512& a6, __m512& a7, __m512 p, const std::uint32_t* v) {
#if defined(__GNUC__) && !defined(__clang__)
    asm("vdpbf16ps (%[v])%{1to16%}, %[p], %[a0]\n\t"
        "vdpbf16ps 4(%[v])%{1to16%}, %[p], %[a1]\n\t"
        "vdpbf16ps 8(%[v])%{1to16%}, %[p], %[a2]\n\t"
        "vdpbf16ps 12(%[v])%{1to16%}, %[p], %[a3]\n\t"
        "vdpbf16ps 16(%[v])%{1to16%}, %[p], %[a4]\n\t"
        "vdpbf16ps 20(%[v])%{1to16%}, %[p], %[a5]\n\t"
        "vdpbf16ps 24(%[v])%{1to16%}, %[p], %[a6]\n\t"
        "vdpbf16ps 28(%[v])%{1to16%}, %[p], %[a7]"
        : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6),
          [a7] "+v"(a7)
        : [p] "v"(p), [v] "r"(v), "m"(*reinterpret_cast<const std::uint32_t(*)[8]>(v)));
#else
    __m512* a[8] = {&a0, &a1, &a2, &a3, &a4, &a5, &a6, &a7};
    for (int i = 0; i < 8; ++i)
        *a[i] = _mm512_dpbf16_ps(*a[i], (__m512bh)p, (__m512bh)_mm512_set1_epi32(static_cast<int>(v[i])));
#endif
}

// S[k] (16 heads, at s + 16 k) for the 8 rows rows[0..8) of `pairs` bf16
// pairs each; 8 rows of the next tile prefetched.
DSV2_AVX512_BF16 inline void bf16_score_block8(const bf16* const* rows, std::int64_t pairs, const std::uint32_t* q,
                                               float* s, RowPrefetcher<bf16>& pf) {
    // Two accumulators per row (even and odd pairs): 16 chains cover the
    // latency of `vdpbf16ps` at two a cycle.
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
    for (int k = 0; k < 8; ++k) pf.whole_row();
    std::int64_t j = 0;
    for (; j + 2 <= pairs; j += 2) {
        dpbf16_rows8(a0, a1, a2, a3, a4, a5, a6, a7, _mm512_loadu_ps(q + j * 16), rows, 4 * j);
        dpbf16_rows8(b0, b1, b2, b3, b4, b5, b6, b7, _mm512_loadu_ps(q + (j + 1) * 16), rows, 4 * j + 4);
    }
    if (j < pairs) dpbf16_rows8(a0, a1, a2, a3, a4, a5, a6, a7, _mm512_loadu_ps(q + j * 16), rows, 4 * j);
    const __m512 sum[8] = {_mm512_add_ps(a0, b0), _mm512_add_ps(a1, b1), _mm512_add_ps(a2, b2),
                           _mm512_add_ps(a3, b3), _mm512_add_ps(a4, b4), _mm512_add_ps(a5, b5),
                           _mm512_add_ps(a6, b6), _mm512_add_ps(a7, b7)};
    for (int k = 0; k < 8; ++k) _mm512_storeu_ps(s + k * 16, sum[k]);
}

// Two rows' first `rank` lanes regrouped into 32-bit words of one lane from
// each row; the words of a 32-lane stretch come out in lane_channel_of's
// order (rows = 2), 16 at out and the next 16 at out + block_stride.
DSV2_AVX512 inline void bf16_regroup2(const bf16* r0, const bf16* r1, std::int64_t rank, std::uint32_t* out,
                                      std::int64_t block_stride) {
    for (std::int64_t c = 0; c < rank; c += 32) {
        const __m512i x0 = _mm512_loadu_si512(r0 + c), x1 = _mm512_loadu_si512(r1 + c);
        std::uint32_t* o = out + c / 16 * block_stride;
        _mm512_storeu_si512(o, _mm512_unpacklo_epi16(x0, x1));
        _mm512_storeu_si512(o + block_stride, _mm512_unpackhi_epi16(x0, x1));
    }
}

// O[w] (16 heads) = corr · O[w] + Σ_t2 P2[t2] · V2[t2][w] for the 16 words
// w of one block, from n2 row pairs (the block's 16 words of pair t2 at
// v2 + 16 t2). Two rows of the next tile are prefetched per call.
DSV2_AVX512_BF16 inline void bf16_value_block16(const std::uint32_t* p2, const std::uint32_t* v2, std::int64_t n2,
                                                __m512 corr, float* o, RowPrefetcher<bf16>& pf) {
    // Sixteen named accumulators, not an array: so they stay in registers.
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    pf.whole_row();
    pf.whole_row();
    for (std::int64_t t = 0; t < n2; ++t) {
        const __m512 pv = _mm512_loadu_ps(p2 + t * 16);
        dpbf16_words8(a0, a1, a2, a3, a4, a5, a6, a7, pv, v2 + t * 16);
        dpbf16_words8(a8, a9, a10, a11, a12, a13, a14, a15, pv, v2 + t * 16 + 8);
    }
    const __m512 acc[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
    for (int i = 0; i < 16; ++i)
        _mm512_storeu_ps(o + i * 16, _mm512_fmadd_ps(_mm512_loadu_ps(o + i * 16), corr, acc[i]));
}

// 16 lanes rounded to bf16 (ties to even), in the low halves of 32-bit words.
DSV2_AVX512_BF16 inline __m512i bf16_words(__m512 x) {
    return _mm512_maskz_cvtepu16_epi32(0xffff, (__m256i)_mm512_cvtneps_pbh(x));
}

// The softmax state of one split of rows [s0, s1) for one head block: o
// (rank, 16) in lane_channel_of's order (rows = 2), max and sum (16 each).
DSV2_AVX512_BF16 inline void decode_split_bf16_dot(const std::uint32_t* q, std::int64_t w, std::int64_t rank,
                                                   const bf16* pages, std::int64_t page, const std::int32_t* table,
                                                   std::int64_t s0, std::int64_t s1, float* o, float* max,
                                                   float* sum) {
    std::fill(o, o + rank * 16, 0.0f);
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), l = _mm512_setzero_ps();
    const bf16** here = lane_tile_pointers<bf16>(kDotTile);
    const bf16** next = here + kDotTile;
    const auto row_pointers = [&](std::int64_t j, const bf16** out) {
        return lane_tile_rows(pages, page, w, table, j, s1, kDotTile, out);
    };
    // Per thread: scores (tile, 16), the paired probabilities (tile / 2, 16)
    // and the regrouped rows (rank / 16 blocks of (tile / 2, 16) words, a
    // line apart: blocks of exactly 4 KiB would put every block's first word
    // in one set of L1).
    const std::int64_t block_stride = (kDotTile / 2 + 1) * 16;
    float* s = f32_scratch<kScratchLatentTile>(kDotTile * 16 + kDotTile / 2 * 16 + rank / 16 * block_stride);
    auto* p2 = reinterpret_cast<std::uint32_t*>(s + kDotTile * 16);
    std::uint32_t* v2 = p2 + kDotTile / 2 * 16;
    RowPrefetcher<bf16> pf;
    std::int64_t n_next = row_pointers(s0, next);
    for (std::int64_t j = s0; j < s1; j += kDotTile) {
        std::swap(here, next);
        const std::int64_t n = n_next, n8 = (n + 7) / 8 * 8, n2 = (n + 1) / 2;
        n_next = row_pointers(j + kDotTile, next);
        pf.start(next, n_next, w);
        // Each block of 8 rows is regrouped for the values right after its
        // scores, while its rows are in L1.
        for (std::int64_t k = 0; k < n8; k += 8) {
            bf16_score_block8(here + k, w / 2, q, s + k * 16, pf);
            for (std::int64_t t = k; t < k + 8; t += 2)
                bf16_regroup2(here[t], here[t + 1], rank, v2 + t / 2 * 16, block_stride);
        }
        // Online softmax, heads in lanes; the padding rows get probability 0.
        __m512 mt = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        for (std::int64_t t = 0; t < n; ++t) mt = _mm512_maskz_max_ps(0xffff, mt, _mm512_loadu_ps(s + t * 16));
        const __m512 m_new = _mm512_maskz_max_ps(0xffff, m, mt);
        const __m512 corr = exp16(_mm512_sub_ps(m, m_new));
        __m512 lt = _mm512_setzero_ps();
        for (std::int64_t t = 0; t < n; ++t)
            _mm512_storeu_ps(s + t * 16, exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t * 16), m_new)));
        if (n % 2 != 0) _mm512_storeu_ps(s + n * 16, _mm512_setzero_ps());
        for (std::int64_t t2 = 0; t2 < n2; ++t2) {
            const __m512i even = bf16_words(_mm512_loadu_ps(s + 2 * t2 * 16));
            const __m512i odd = _mm512_maskz_slli_epi32(0xffff, bf16_words(_mm512_loadu_ps(s + 2 * t2 * 16 + 16)), 16);
            _mm512_storeu_si512(p2 + t2 * 16, _mm512_or_si512(even, odd));
            const __m512 rounded_even = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, even, 16));
            lt = _mm512_add_ps(lt, _mm512_add_ps(rounded_even, _mm512_castsi512_ps(odd)));
        }
        l = _mm512_fmadd_ps(l, corr, lt);
        m = m_new;
        for (std::int64_t c = 0; c < rank; c += 16)
            bf16_value_block16(p2, v2 + c / 16 * block_stride, n2, corr, o + c * 16, pf);
    }
    _mm512_storeu_ps(max, m);
    _mm512_storeu_ps(sum, l);
}

#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
