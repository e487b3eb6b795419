// The AVX-512 VNNI kernels of MLA decode over an 8-bit latent cache
// (core/latent_q8.hpp); mla_decode_q8.hpp chooses them at run time.
//
// Both products run on vpdpbusd (4 byte products per 32-bit lane, 4 times
// the multiply-adds of an f32 FMA on the same port), with heads in lanes: a
// zmm holds 16 heads, so the score of a key, its probability and each output
// channel are one vector, and no product needs a horizontal sum.
//   S = q Kᵀ   the query is quantized once per call to int8, per head and
//              group (its scale sq and Σq per group kept); a key's bytes
//              (unsigned, +128) are broadcast four at a time against the
//              query's, and S = sk·sq·(acc − 128·Σq) per group, plus the
//              rope lanes: where the CPU has AVX512_BF16 (and rope is even),
//              vdpbf16ps on the cached bf16 pairs as they are, q's rope lanes
//              rounded to bf16; otherwise f32 FMAs over the widened lanes.
//   O += P V   the probabilities, times each row's group scale, are quantized
//              per tile, head and group to 0..255 (unsigned); the tile's rows
//              are regrouped four rows to a 32-bit word (signed, −128), and
//              O = corr·O + sp·acc per channel.
// So the results differ from attention over the dequantized rows by the
// rounding of q to 8 bits (relative 1/254 of its group's largest lane), of its
// rope lanes to bf16 (relative 2^-9, with vdpbf16ps) and of P to 8 bits (1/510
// of the tile's largest weight): docs/usage.md ("Int8 latent cache") has the
// measured error.
// Needs rank a multiple of 64 (group 64 or 128).
#pragma once

#include "dsv2/backend/cpu/bf16_dot.hpp"
#include "dsv2/backend/cpu/gemv_q8.hpp"
#include "dsv2/backend/cpu/mla_decode_avx512.hpp"
#include "dsv2/backend/cpu/mla_decode_lanes.hpp"
#include "dsv2/backend/cpu/prefetch.hpp"
#include "dsv2/backend/cpu/scratch.hpp"
#include "dsv2/core/latent_q8.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace dsv2::cpu_detail {

// Rows per tile of the q8 kernels (a multiple of 8): 128 rows of V2 are 82 KiB
// of cache bytes and 64 KiB regrouped, both in L2.
inline constexpr std::int64_t kQ8Tile = 128;

#if DSV2_X86_KERNELS

inline std::int32_t load_i32(const void* p) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

#define DSV2_AVX512_VNNI_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))

// The query of one block of up to 16 heads, heads in lanes (mla_decode_q8.hpp
// fills it): the int8 lanes as 32-bit words of 4 (word h of quad j holds
// q8[h][4j .. 4j+3]), per group the f32 scale and 128 · Σ q8, and the rope
// lanes in f32 and as bf16 pairs (word h of pair j holds lanes 2j, 2j+1) —
// all of it scaled by the softmax scale.
struct Q8Query {
    const std::uint8_t* q8 = nullptr;  // (rank / 4, 16) words
    const std::int32_t* offset = nullptr;  // (groups, 16)
    const float* scale = nullptr;      // (groups, 16)
    const float* rope = nullptr;       // (rope, 16)
    const std::uint32_t* rope_pairs = nullptr;  // (rope / 2, 16), for even rope
};

// n bf16 lanes (a row's rope lanes, 4-byte aligned or not) as f32.
DSV2_AVX512 inline void q8_widen_rope(const std::uint8_t* src, std::int64_t n, float* dst) {
    for (std::int64_t d = 0; d < n; d += 16) {
        const __mmask16 m = lanes_mask(n - d);
        const __m512i x = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_maskz_loadu_epi16(m, src + 2 * d));
        _mm512_mask_storeu_ps(dst + d, m, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, x, 16)));
    }
}

// S[k] (16 heads) for the 8 rows rows[0..8), and row k's scale of group g
// into row_scale[g * kQ8Tile + k]; one row of the next tile prefetched per
// group. With Bf16Rope the rope lanes are read from the rows as bf16 pairs,
// otherwise from rope_rows, widened.
template <bool Bf16Rope>
DSV2_AVX512_VNNI_BF16 inline void q8_score_block8(const std::uint8_t* const* rows, const LatentQ8Format& f,
                                                  const Q8Query& q, const float* rope_rows, float* s_out,
                                                  float* row_scale, RowPrefetcher<std::uint8_t>& pf) {
    const std::int64_t g_len = f.group;
    __m512 s[8];
    for (auto& v : s) v = _mm512_setzero_ps();
    for (std::int64_t g = 0; g < f.groups(); ++g) {
        __m512i acc[8];
        for (auto& a : acc) a = _mm512_setzero_si512();
        pf.whole_row();  // not inside the loop: its branches cost as much as the loads
        const std::int64_t c0 = g * g_len;
        for (std::int64_t c = c0; c < c0 + g_len; c += 4) {
            const __m512i qv = _mm512_loadu_si512(q.q8 + c * 16);
            for (int k = 0; k < 8; ++k)
                dpbusd(acc[k], _mm512_set1_epi32(load_i32(rows[k] + c)), qv);
        }
        const __m512i off = _mm512_loadu_si512(q.offset + g * 16);
        const __m512 sq = _mm512_loadu_ps(q.scale + g * 16);
        for (int k = 0; k < 8; ++k) {
            row_scale[g * kQ8Tile + k] = f.scale(rows[k], g);
            const __m512 fk = _mm512_mul_ps(sq, _mm512_set1_ps(row_scale[g * kQ8Tile + k]));
            s[k] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, _mm512_sub_epi32(acc[k], off)), fk, s[k]);
        }
    }
    if constexpr (Bf16Rope) {
        for (std::int64_t j = 0; j < f.rope / 2; ++j) {
            const auto qv = (__m512bh)_mm512_loadu_si512(q.rope_pairs + j * 16);
            const std::int64_t at = f.rope_offset() + 4 * j;
            for (int k = 0; k < 8; ++k)
                s[k] = _mm512_dpbf16_ps(s[k], qv, (__m512bh)_mm512_set1_epi32(load_i32(rows[k] + at)));
        }
    } else {
        for (std::int64_t d = 0; d < f.rope; ++d) {
            const __m512 qv = _mm512_loadu_ps(q.rope + d * 16);
            for (int k = 0; k < 8; ++k) s[k] = _mm512_fmadd_ps(qv, _mm512_set1_ps(rope_rows[k * f.rope + d]), s[k]);
        }
    }
    for (int k = 0; k < 8; ++k) _mm512_storeu_ps(s_out + k * 16, s[k]);
}

// Four rows' int8 lanes regrouped into 32-bit words of one lane from each
// row, signed; the words of a 64-lane stretch come out in the order of
// lane_channel_of (rows = 4), 16 at out, the next 16 at out + block_stride, and so on.
DSV2_AVX512 inline void q8_regroup4(const std::uint8_t* r0, const std::uint8_t* r1, const std::uint8_t* r2,
                                    const std::uint8_t* r3, std::int64_t rank, std::int32_t* out,
                                    std::int64_t block_stride) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (std::int64_t c = 0; c < rank; c += 64) {
        const __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(r0 + c), flip);
        const __m512i x1 = _mm512_xor_si512(_mm512_loadu_si512(r1 + c), flip);
        const __m512i x2 = _mm512_xor_si512(_mm512_loadu_si512(r2 + c), flip);
        const __m512i x3 = _mm512_xor_si512(_mm512_loadu_si512(r3 + c), flip);
        const __m512i lo01 = _mm512_unpacklo_epi8(x0, x1), lo23 = _mm512_unpacklo_epi8(x2, x3);
        const __m512i hi01 = _mm512_unpackhi_epi8(x0, x1), hi23 = _mm512_unpackhi_epi8(x2, x3);
        std::int32_t* o = out + c / 16 * block_stride;
        _mm512_storeu_si512(o, _mm512_unpacklo_epi16(lo01, lo23));
        _mm512_storeu_si512(o + block_stride, _mm512_unpackhi_epi16(lo01, lo23));
        _mm512_storeu_si512(o + 2 * block_stride, _mm512_unpacklo_epi16(hi01, hi23));
        _mm512_storeu_si512(o + 3 * block_stride, _mm512_unpackhi_epi16(hi01, hi23));
    }
}

// a[i] += Σ of 4 products of p's bytes with those of the 32-bit word v[i],
// for i in [0, 8): the word broadcast from memory by the instruction itself
// ({1to16}). Through the intrinsics GCC 12 kept a separate broadcast load per
// product and copied every accumulator twice per step; the value loop ran at
// ~1.1 products a cycle, and with this at ~1.7 (docs/benchmarks.md).
DSV2_AVX512_VNNI inline void dpbusd8_words(__m512i& a0, __m512i& a1, __m512i& a2, __m512i& a3, __m512i& a4,
                                           __m512i& a5, __m512i& a6, __m512i& a7, __m512i p, const std::int32_t* v) {
#if defined(__GNUC__) && !defined(__clang__)
    asm("vpdpbusd (%[v])%{1to16%}, %[p], %[a0]\n\t"
        "vpdpbusd 4(%[v])%{1to16%}, %[p], %[a1]\n\t"
        "vpdpbusd 8(%[v])%{1to16%}, %[p], %[a2]\n\t"
        "vpdpbusd 12(%[v])%{1to16%}, %[p], %[a3]\n\t"
        "vpdpbusd 16(%[v])%{1to16%}, %[p], %[a4]\n\t"
        "vpdpbusd 20(%[v])%{1to16%}, %[p], %[a5]\n\t"
        "vpdpbusd 24(%[v])%{1to16%}, %[p], %[a6]\n\t"
        "vpdpbusd 28(%[v])%{1to16%}, %[p], %[a7]"
        : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5), [a6] "+v"(a6),
          [a7] "+v"(a7)
        : [p] "v"(p), [v] "r"(v), "m"(*reinterpret_cast<const std::int32_t(*)[8]>(v)));
#else
    __m512i* a[8] = {&a0, &a1, &a2, &a3, &a4, &a5, &a6, &a7};
    for (int i = 0; i < 8; ++i) *a[i] = _mm512_dpbusd_epi32(*a[i], p, _mm512_set1_epi32(v[i]));
#endif
}

// O[w] (16 heads) = corr · O[w] + sp · Σ_t4 P4[t4] · V4[t4][w] for the 16
// regrouped words w in [w0, w0 + 16), from n4 words of 4 rows; V4 holds the
// block's 16 words of each quad t4 at v4 + 16 t4. Two rows of the next tile
// are prefetched per call (with q8_score_block8's, every row of it).
DSV2_AVX512_VNNI inline void q8_value_block16(const std::int32_t* p4, const std::int32_t* v4,
                                              std::int64_t n4, __m512 sp, __m512 corr, float* o,
                                              RowPrefetcher<std::uint8_t>& pf) {
    // Sixteen named accumulators, not an array: so they stay in registers.
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    __m512i a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    pf.whole_row();
    pf.whole_row();
    for (std::int64_t t = 0; t < n4; ++t) {
        const __m512i pv = _mm512_loadu_si512(p4 + t * 16);
        dpbusd8_words(a0, a1, a2, a3, a4, a5, a6, a7, pv, v4 + t * 16);
        dpbusd8_words(a8, a9, a10, a11, a12, a13, a14, a15, pv, v4 + t * 16 + 8);
    }
    const __m512i acc[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
    for (int i = 0; i < 16; ++i) {
        float* oi = o + i * 16;
        const __m512 scaled = _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(0xffff, acc[i]), sp);
        _mm512_storeu_ps(oi, _mm512_fmadd_ps(_mm512_loadu_ps(oi), corr, scaled));
    }
}

// The probabilities of row t (16 heads, at p + 16 t) times its scale (of the
// group whose scales row_scale holds).
DSV2_AVX512 inline __m512 q8_weighted(const float* p, const float* row_scale, std::int64_t t) {
    return _mm512_mul_ps(_mm512_loadu_ps(p + t * 16), _mm512_set1_ps(row_scale[t]));
}

// The softmax state of one split of rows [s0, s1) for one head block: o
// (rank, 16) in the regrouped word order, max and sum (16 each).
template <bool Bf16Rope>
DSV2_AVX512_VNNI_BF16 inline void decode_split_q8(const Q8Query& q, const LatentQ8Format& f, const std::uint8_t* pages,
                                             std::int64_t page, const std::int32_t* table, std::int64_t s0,
                                             std::int64_t s1, float* o, float* max, float* sum) {
    const std::int64_t rank = f.rank, rb = f.row_bytes();
    std::fill(o, o + rank * 16, 0.0f);
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), l = _mm512_setzero_ps();
    const std::uint8_t** here = lane_tile_pointers<std::uint8_t>(kQ8Tile);
    const std::uint8_t** next = here + kQ8Tile;
    const auto row_pointers = [&](std::int64_t j, const std::uint8_t** out) {
        return lane_tile_rows(pages, page, rb, table, j, s1, kQ8Tile, out);
    };
    // Per thread: scores then probabilities (tile, 16), the rope lanes in f32
    // (tile, rope), the quantized probabilities (groups, tile / 4, 16) and the
    // regrouped rows (rank / 16 blocks of (tile / 4, 16) words, a line apart),
    // the probabilities' scales (groups, 16) and the rows' (groups, tile).
    // The value loop reads a block in order; in rows of rank words its stride
    // of 2 KiB fell on two sets of L1, and blocks of exactly 2 KiB put the
    // regrouping's stores there.
    const std::int64_t block_stride = (kQ8Tile / 4 + 1) * 16;
    const std::int64_t groups = f.groups();
    float* s = f32_scratch<kScratchLatentTile>(kQ8Tile * 16 + kQ8Tile * f.rope + groups * kQ8Tile * 4 +
                                               rank / 16 * block_stride + groups * 16 + groups * kQ8Tile);
    float* rope_rows = s + kQ8Tile * 16;
    auto* p4 = reinterpret_cast<std::int32_t*>(rope_rows + kQ8Tile * f.rope);
    std::int32_t* v4 = p4 + groups * kQ8Tile * 4;
    float* sp = reinterpret_cast<float*>(v4 + rank / 16 * block_stride);
    float* row_scale = sp + groups * 16;
    RowPrefetcher<std::uint8_t> pf;
    std::int64_t n_next = row_pointers(s0, next);
    for (std::int64_t j = s0; j < s1; j += kQ8Tile) {
        std::swap(here, next);
        const std::int64_t n = n_next, n8 = (n + 7) / 8 * 8, n4 = (n + 3) / 4;
        n_next = row_pointers(j + kQ8Tile, next);
        pf.start(next, n_next, rb);
        if constexpr (!Bf16Rope)
            for (std::int64_t t = 0; t < n8; ++t)
                q8_widen_rope(here[t] + f.rope_offset(), f.rope, rope_rows + t * f.rope);
        // Each block of 8 rows is regrouped for the values right after its
        // scores, while its rows are in L1.
        for (std::int64_t k = 0; k < n8; k += 8) {
            q8_score_block8<Bf16Rope>(here + k, f, q, rope_rows + k * f.rope, s + k * 16, row_scale + k, pf);
            for (std::int64_t t = k; t < k + 8; t += 4)
                q8_regroup4(here[t], here[t + 1], here[t + 2], here[t + 3], rank, v4 + t / 4 * 16, block_stride);
        }
        // Online softmax, heads in lanes; the padding rows get probability 0.
        __m512 mt = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        for (std::int64_t t = 0; t < n; ++t) mt = _mm512_maskz_max_ps(0xffff, mt, _mm512_loadu_ps(s + t * 16));
        const __m512 m_new = _mm512_maskz_max_ps(0xffff, m, mt);
        const __m512 corr = exp16(_mm512_sub_ps(m, m_new));
        __m512 lt = _mm512_setzero_ps();
        for (std::int64_t t = 0; t < n8; ++t) {
            const __m512 p = t < n ? exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t * 16), m_new)) : _mm512_setzero_ps();
            _mm512_storeu_ps(s + t * 16, p);
            lt = _mm512_add_ps(lt, p);
        }
        l = _mm512_fmadd_ps(l, corr, lt);
        m = m_new;
        // P · (row scale of the group) to 0..255 per head and group, 4 rows to a word.
        for (std::int64_t g = 0; g < groups; ++g) {
            __m512 pmax = _mm512_setzero_ps();
            const float* rs = row_scale + g * kQ8Tile;
            for (std::int64_t t = 0; t < n; ++t) pmax = _mm512_maskz_max_ps(0xffff, pmax, q8_weighted(s, rs, t));
            const __mmask16 live = _mm512_cmp_ps_mask(pmax, _mm512_setzero_ps(), _CMP_GT_OQ);
            const __m512 inv = _mm512_maskz_div_ps(live, _mm512_set1_ps(255.0f), pmax);
            _mm512_storeu_ps(sp + g * 16, _mm512_mul_ps(pmax, _mm512_set1_ps(1.0f / 255.0f)));
            for (std::int64_t t4 = 0; t4 < n4; ++t4) {
                __m512i word = _mm512_setzero_si512();
                for (int i = 0; i < 4; ++i) {
                    const __m512i x = _mm512_maskz_cvtps_epi32(0xffff, _mm512_mul_ps(q8_weighted(s, rs, 4 * t4 + i), inv));
                    const __m512i b = _mm512_maskz_min_epi32(
                        0xffff, _mm512_maskz_max_epi32(0xffff, x, _mm512_setzero_si512()), _mm512_set1_epi32(255));
                    word = _mm512_or_si512(word, _mm512_maskz_slli_epi32(0xffff, b, 8 * i));
                }
                _mm512_storeu_si512(p4 + (g * kQ8Tile / 4 + t4) * 16, word);
            }
        }
        for (std::int64_t w = 0; w < rank; w += 16) {
            const std::int64_t g = w / f.group;  // a 64-lane stretch lies in one group
            q8_value_block16(p4 + g * kQ8Tile / 4 * 16, v4 + w / 16 * block_stride, n4, _mm512_loadu_ps(sp + g * 16), corr,
                             o + w * 16, pf);
        }
    }
    _mm512_storeu_ps(max, m);
    _mm512_storeu_ps(sum, l);
}

#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
