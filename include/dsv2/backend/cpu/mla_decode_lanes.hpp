// What the MLA decode kernels with heads in lanes share (the int8 cache's,
// mla_decode_q8_vnni.hpp, and the bf16 cache's dot-product kernel,
// mla_decode_bf16_dot.hpp): a zmm holds 16 heads, so a split's state is a
// running max and sum (16 each) and an output of (rank, 16), its channels in
// the order the kernel regrouped the cache rows into; the splits of a
// context merge here, back into (heads, rank) in column order.
#pragma once

#include "dsv2/backend/cpu/exp16.hpp"
#include "dsv2/backend/cpu/gemv.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace dsv2::cpu_detail {

inline constexpr std::int64_t kLaneHeads = 16;  // heads per block: the lanes of a zmm
// At most this many splits of one context (the merge keeps a weight vector per split).
inline constexpr std::int64_t kMaxLaneSplits = 64;

// The channel of output word w when the rows were regrouped by unpacking
// `rows` rows' elements (bytes for 4, bf16 for 2) into 32-bit words: a
// 128-bit block L of a stretch of 16 · rows channels holds channels
// 4 · rows · L + [0, 4 · rows) of each row, and the unpacks leave its
// channels + {0..3} in the stretch's first store, + {4..7} in the second, and
// so on; each store is 16 words, the k-th 16 words after the (k−1)-th.
inline std::int64_t lane_channel_of(std::int64_t w, std::int64_t rows) {
    const std::int64_t stretch = 16 * rows, c = w / stretch * stretch, k = (w % stretch) / 16, i = w % 16;
    return c + (i / 4) * 4 * rows + k * 4 + i % 4;
}

// The heads-in-lanes kernels read a tile of rows through its pointers:
// this thread's buffer of 2 · tile of them (the tile's and the next one's),
// kept across calls.
template <class Row>
const Row** lane_tile_pointers(std::int64_t tile) {
    thread_local std::vector<const Row*> rows;
    rows.resize(static_cast<std::size_t>(2 * tile));
    return rows.data();
}

// Pointers to rows [j, min(j + tile, s1)) of a sequence whose rows (of
// row_len elements, `page` to a page) lie in the pages its block table names,
// into out, padded to a multiple of 8 with the last row (whose probabilities
// the kernels set to 0); returns how many are real.
template <class Row>
std::int64_t lane_tile_rows(const Row* pages, std::int64_t page, std::int64_t row_len, const std::int32_t* table,
                            std::int64_t j, std::int64_t s1, std::int64_t tile, const Row** out) {
    const std::int64_t n = std::clamp<std::int64_t>(s1 - j, 0, tile);
    for (std::int64_t i = 0, k = j / page, in_page = j % page; i < n; ++i) {
        out[i] = pages + (static_cast<std::int64_t>(table[k]) * page + in_page) * row_len;
        if (++in_page == page) in_page = 0, ++k;
    }
    for (std::int64_t i = n; i < (n + 7) / 8 * 8; ++i) out[i] = out[n - 1];
    return n;
}

#if DSV2_X86_KERNELS

// out[h][c] (h < nh, row stride out_ld) = Σ_p e^(max_p − M) o_p / Σ_p e^(max_p − M) sum_p
// over the parts' states (o_p: (rank, 16) in lane_channel_of's order for
// `rows`).
DSV2_AVX512 inline void merge_lane_splits(int parts, std::int64_t rank, std::int64_t rows, std::int64_t nh,
                                          const float* o, const float* max, const float* sum, float* merged,
                                          float* out, std::int64_t out_ld) {
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int p = 0; p < parts; ++p) m = _mm512_maskz_max_ps(0xffff, m, _mm512_loadu_ps(max + p * 16));
    __m512 weight[kMaxLaneSplits], denom = _mm512_setzero_ps();
    for (int p = 0; p < parts; ++p) {
        // An empty split (sum 0) weighs nothing.
        const __m512 s = _mm512_loadu_ps(sum + p * 16);
        const __mmask16 live = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        weight[p] = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_loadu_ps(max + p * 16), m)));
        denom = _mm512_fmadd_ps(weight[p], s, denom);
    }
    for (int p = 0; p < parts; ++p) weight[p] = _mm512_div_ps(weight[p], denom);
    for (std::int64_t w = 0; w < rank; ++w) {
        __m512 acc = _mm512_setzero_ps();
        for (int p = 0; p < parts; ++p) acc = _mm512_fmadd_ps(weight[p], _mm512_loadu_ps(o + (p * rank + w) * 16), acc);
        _mm512_storeu_ps(merged + w * 16, acc);
    }
    // Back from heads in lanes and the regrouped order.
    for (std::int64_t w = 0; w < rank; ++w) {
        const float* src = merged + w * 16;
        float* dst = out + lane_channel_of(w, rows);
        for (std::int64_t h = 0; h < nh; ++h) dst[h * out_ld] = src[h];
    }
}

#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
