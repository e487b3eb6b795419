// The AVX-512 kernels of MLA decode for a bf16 latent cache (the default
// cache of bf16 and int8 models); mla_decode.hpp chooses them at run time
// and keeps its Eigen path for the other element types and other CPUs.
//
// Arithmetic is f32 throughout and exact per product: a bf16 number is the
// top half of an f32, so 32 bf16 lanes loaded as sixteen 32-bit words widen
// with one instruction per half — the even lanes by a 16-bit left shift, the
// odd lanes by masking off the low half. The widened vectors hold lanes in
// the order (0, 2, ..., 30 | 1, 3, ..., 31) of each 32-lane block, so
//   - the query is stored once per call in that order (and pre-scaled), and
//     a score is a plain dot product of permuted query and permuted key;
//   - the output accumulates in that order, and the final merge puts it back
//     (unpermute_row).
// The result differs from the f32 reference only in f32 summation order.
//
// A tile of rows is widened once (widen_rows) into a per-thread f32 buffer
// in L2, which both products then read; while they run, they prefetch the
// next tile's rows (RowPrefetcher). Kernels (16 zmm accumulators each):
//   score_tile<MH, NK>  S[h, k] = q'[h] · key[k] for MH ≤ 4 heads × NK ≤ 4 keys;
//   value_tile<MH>      O[h, c0:c0+32] = corr[h] O + Σ_j P[h, j] V[j, c0:c0+32]
//                       for MH ≤ 8 heads;
//   exp16 (exp16.hpp)   the softmax's e^x.
// A tile gathers up to kFastTile row pointers through the block table, so
// tiles do not stop at page boundaries.
#pragma once

#include "dsv2/backend/cpu/exp16.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/cpu/prefetch.hpp"
#include "dsv2/backend/cpu/scratch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace dsv2::cpu_detail {

// Rows per tile of the fast path: 128 rows of V2's 576 lanes are 288 KiB
// widened (L2), and the probabilities of 16 heads 8 KiB. (Widening each row
// once, instead of once for the scores and again per 8-head group of the
// values, made attention over a 4K context with cold caches 15-25% faster:
// docs/benchmarks.md.)
inline constexpr std::int64_t kFastTile = 128;

#if DSV2_X86_KERNELS

// Lanes [c, c + 32) of a row with `n` lanes: the mask of the valid ones.
inline __mmask32 mask32(std::int64_t c, std::int64_t n) {
    const std::int64_t left = std::clamp<std::int64_t>(n - c, 0, 32);
    return left == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1u);
}

// The even and odd bf16 lanes of 32 as f32 (see the header comment).
DSV2_AVX512 inline void widen_even_odd(const bf16* p, __mmask32 m, __m512& even, __m512& odd) {
    const __m512i x = _mm512_maskz_loadu_epi16(m, p);
    even = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, x, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// The largest lane (the zero-masked forms above dodge GCC 12's
// -Wmaybe-uninitialized, as in gemv.hpp).
DSV2_AVX512 inline float hmax(__m512 v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    return *std::max_element(t, t + 16);
}

// The sums of four vectors' lanes into out[0..3] (out holds 16 floats).
DSV2_AVX512 inline void sum4(__m512 a, __m512 b, __m512 c, __m512 d, float* out) {
    // Pairs interleaved, then each 128-bit lane holds partial sums of a, b, c, d.
    const __m512 ab = _mm512_add_ps(_mm512_maskz_unpacklo_ps(0xffff, a, b), _mm512_maskz_unpackhi_ps(0xffff, a, b));  // a b a b
    const __m512 cd = _mm512_add_ps(_mm512_maskz_unpacklo_ps(0xffff, c, d), _mm512_maskz_unpackhi_ps(0xffff, c, d));  // c d c d
    const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xee));
    // Fold the four 128-bit lanes: swap halves, then swap pairs.
    const __m512 h = _mm512_add_ps(abcd, _mm512_maskz_shuffle_f32x4(0xffff, abcd, abcd, 0x4e));
    _mm512_storeu_ps(out, _mm512_add_ps(h, _mm512_maskz_shuffle_f32x4(0xffff, h, h, 0xb1)));
}

// Rows rows[0, n) widened into tile (n rows of wp = round_up(w, 32) f32, permuted).
DSV2_AVX512 inline void widen_rows(const bf16* const* rows, std::int64_t n, std::int64_t w, float* tile) {
    const std::int64_t wp = (w + 31) / 32 * 32;
    for (std::int64_t k = 0; k < n; ++k) {
        for (std::int64_t c = 0; c < wp; c += 32) {
            __m512 e, o;
            widen_even_odd(rows[k] + c, mask32(c, w), e, o);
            _mm512_storeu_ps(tile + k * wp + c, e);
            _mm512_storeu_ps(tile + k * wp + c + 16, o);
        }
    }
}

// s[h * lds + k] = q[h * ldq : +wp] · kb[k * wp : +wp] for MH heads × NK keys,
// both permuted and zero-padded to wp lanes.
template <int MH, int NK>
DSV2_AVX512 void score_tile(const float* q, std::int64_t ldq, const float* kb, std::int64_t wp, float* s,
                            std::int64_t lds, RowPrefetcher<bf16>& pf) {
    __m512 acc[MH][NK];
    for (auto& a : acc)
        for (auto& e : a) e = _mm512_setzero_ps();
    for (std::int64_t c = 0; c < wp; c += 16) {
        if (c % 64 == 0) pf.step();
        __m512 kv[NK];
        for (int k = 0; k < NK; ++k) kv[k] = _mm512_loadu_ps(kb + k * wp + c);
        for (int h = 0; h < MH; ++h) {
            const __m512 qv = _mm512_loadu_ps(q + h * ldq + c);
            for (int k = 0; k < NK; ++k) acc[h][k] = _mm512_fmadd_ps(qv, kv[k], acc[h][k]);
        }
    }
    for (int h = 0; h < MH; ++h) {
        float t[16];
        const __m512 z = _mm512_setzero_ps();
        sum4(acc[h][0], NK > 1 ? acc[h][NK > 1 ? 1 : 0] : z, NK > 2 ? acc[h][NK > 2 ? 2 : 0] : z,
             NK > 3 ? acc[h][NK > 3 ? 3 : 0] : z, t);
        for (int k = 0; k < NK; ++k) s[h * lds + k] = t[k];
    }
}

// o[h * ldo : +32] = corr[h] · o + Σ_j p[h * ldp + j] · tile[j, c0 : c0 + 32]
// for MH heads, the tile widened and permuted (widen_rows); `even` and `odd`
// mask the lanes of columns below `rank` (the rope lanes past it read as 0).
template <int MH>
DSV2_AVX512 void value_tile(const float* p, std::int64_t ldp, std::int64_t n, const float* tile, std::int64_t wp,
                            __mmask16 even, __mmask16 odd, const float* corr, float* o, std::int64_t ldo,
                            RowPrefetcher<bf16>& pf) {
    __m512 acc[MH][2];
    for (int h = 0; h < MH; ++h) {
        const __m512 f = _mm512_set1_ps(corr[h]);
        acc[h][0] = _mm512_mul_ps(f, _mm512_loadu_ps(o + h * ldo));
        acc[h][1] = _mm512_mul_ps(f, _mm512_loadu_ps(o + h * ldo + 16));
    }
    for (std::int64_t j = 0; j < n; ++j) {
        if (j % 4 == 0) pf.step();
        const __m512 ve = _mm512_maskz_loadu_ps(even, tile + j * wp), vo = _mm512_maskz_loadu_ps(odd, tile + j * wp + 16);
        for (int h = 0; h < MH; ++h) {
            const __m512 pj = _mm512_set1_ps(p[h * ldp + j]);
            acc[h][0] = _mm512_fmadd_ps(pj, ve, acc[h][0]);
            acc[h][1] = _mm512_fmadd_ps(pj, vo, acc[h][1]);
        }
    }
    for (int h = 0; h < MH; ++h) {
        _mm512_storeu_ps(o + h * ldo, acc[h][0]);
        _mm512_storeu_ps(o + h * ldo + 16, acc[h][1]);
    }
}

template <int NK>
DSV2_AVX512 void score_heads(const float* q, std::int64_t ldq, std::int64_t heads, const float* kb, float* s,
                             std::int64_t lds, RowPrefetcher<bf16>& pf) {
    std::int64_t h = 0;
    for (; h + 4 <= heads; h += 4) score_tile<4, NK>(q + h * ldq, ldq, kb, ldq, s + h * lds, lds, pf);
    switch (heads - h) {
        case 3: score_tile<3, NK>(q + h * ldq, ldq, kb, ldq, s + h * lds, lds, pf); break;
        case 2: score_tile<2, NK>(q + h * ldq, ldq, kb, ldq, s + h * lds, lds, pf); break;
        case 1: score_tile<1, NK>(q + h * ldq, ldq, kb, ldq, s + h * lds, lds, pf); break;
        default: break;
    }
}

// Softmax state of one split, the fast path's twin of DecodePartial: the
// output is (H, round_up(C, 32)) in the permuted order.
DSV2_AVX512 inline void decode_split_bf16(const float* q, std::int64_t heads, std::int64_t w, std::int64_t rank,
                                          const bf16* pages, std::int64_t page, const std::int32_t* table,
                                          std::int64_t s0, std::int64_t s1, float* o, float* max, float* sum) {
    const std::int64_t wp = (w + 31) / 32 * 32, rp = (rank + 31) / 32 * 32;
    std::fill(o, o + heads * rp, 0.0f);
    std::fill(max, max + heads, -std::numeric_limits<float>::infinity());
    std::fill(sum, sum + heads, 0.0f);
    thread_local std::vector<const bf16*> rows;  // this tile's and the next one's
    rows.resize(static_cast<std::size_t>(2 * kFastTile));
    const bf16** here = rows.data();
    const bf16** next = rows.data() + kFastTile;
    const auto row_pointers = [&](std::int64_t j, const bf16** out) {
        const std::int64_t n = std::clamp<std::int64_t>(s1 - j, 0, kFastTile);
        for (std::int64_t i = 0; i < n; ++i) out[i] = pages + (table[(j + i) / page] * page + (j + i) % page) * w;
        return n;
    };
    RowPrefetcher<bf16> pf;
    std::int64_t n_next = row_pointers(s0, next);
    float* tile = f32_scratch<kScratchLatentTile>(kFastTile * wp + heads * kFastTile + heads);
    float* s = tile + kFastTile * wp;     // scores, then probabilities (heads, kFastTile)
    float* corr = s + heads * kFastTile;  // (heads)
    for (std::int64_t j = s0; j < s1; j += kFastTile) {
        std::swap(here, next);
        const std::int64_t n = n_next;
        n_next = row_pointers(j + kFastTile, next);
        pf.start(next, n_next, w);
        // Widened once, read by both products below (from L2).
        widen_rows(here, n, w, tile);
        // S = q' Kᵀ, four keys × four heads at a time.
        for (std::int64_t k = 0; k < n; k += 4) {
            const std::int64_t nk = std::min<std::int64_t>(4, n - k);
            const float* kb = tile + k * wp;
            switch (nk) {
                case 4: score_heads<4>(q, wp, heads, kb, s + k, kFastTile, pf); break;
                case 3: score_heads<3>(q, wp, heads, kb, s + k, kFastTile, pf); break;
                case 2: score_heads<2>(q, wp, heads, kb, s + k, kFastTile, pf); break;
                default: score_heads<1>(q, wp, heads, kb, s + k, kFastTile, pf); break;
            }
        }
        // Online softmax: P = e^(S - m_new) in place, corr = e^(m_old - m_new).
        for (std::int64_t h = 0; h < heads; ++h) {
            float* sh = s + h * kFastTile;
            __m512 mv = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
            for (std::int64_t i = 0; i < n; i += 16) {
                const auto mk = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
                mv = _mm512_maskz_max_ps(0xffff, mv, _mm512_mask_loadu_ps(mv, mk, sh + i));
            }
            const float m_new = std::max(max[h], hmax(mv));
            corr[h] = std::exp(max[h] - m_new);  // 0 on the first tile
            const __m512 mb = _mm512_set1_ps(m_new);
            __m512 acc = _mm512_setzero_ps();
            for (std::int64_t i = 0; i < n; i += 16) {
                const auto mk = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
                const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sh + i), mb));
                _mm512_mask_storeu_ps(sh + i, mk, e);
                acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(mk, e));
            }
            sum[h] = sum[h] * corr[h] + hsum(acc);
            max[h] = m_new;
        }
        // O = corr O + P V, 32 columns × 8 heads at a time.
        for (std::int64_t c = 0; c < rp; c += 32) {
            // Lane i of the even half is column c + 2i, of the odd half c + 2i + 1:
            // the lanes below `rank` are the first ceil((rank - first) / 2).
            const __mmask16 even = lanes_mask((rank - c + 1) / 2), odd = lanes_mask((rank - c) / 2);
            const float* tc = tile + c;
            const float* cf = corr;
            std::int64_t h = 0;
            for (; h + 8 <= heads; h += 8)
                value_tile<8>(s + h * kFastTile, kFastTile, n, tc, wp, even, odd, cf + h, o + h * rp + c, rp, pf);
            const float* ph = s + h * kFastTile;
            float* oh = o + h * rp + c;
            switch (heads - h) {
                case 7: value_tile<7>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                case 6: value_tile<6>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                case 5: value_tile<5>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                case 4: value_tile<4>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                case 3: value_tile<3>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                case 2: value_tile<2>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                case 1: value_tile<1>(ph, kFastTile, n, tc, wp, even, odd, cf + h, oh, rp, pf); break;
                default: break;
            }
        }
    }
}

// The 32-lane permutation of a row and its inverse, a block at a time:
// lanes (0, 2, ..., 30 | 1, 3, ..., 31) of each block of 32.
DSV2_AVX512 inline void deinterleave32(__m512 lo, __m512 hi, __m512& even, __m512& odd) {
    const __m512i e = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    even = _mm512_permutex2var_ps(lo, e, hi);
    odd = _mm512_permutex2var_ps(lo, _mm512_add_epi32(e, _mm512_set1_epi32(1)), hi);
}
DSV2_AVX512 inline void interleave32(__m512 even, __m512 odd, __m512& lo, __m512& hi) {
    lo = _mm512_permutex2var_ps(even, _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0), odd);
    hi = _mm512_permutex2var_ps(even, _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8),
                                odd);
}

// q (H rows of w lanes, row stride ldq) · scale into qp (H, round_up(w, 32)),
// permuted, the padding zero.
DSV2_AVX512 inline void permute_query(const float* q, std::int64_t ldq, std::int64_t heads, std::int64_t w,
                                      float scale, float* qp) {
    const std::int64_t wp = (w + 31) / 32 * 32;
    const __m512 f = _mm512_set1_ps(scale);
    for (std::int64_t h = 0; h < heads; ++h) {
        for (std::int64_t c = 0; c < wp; c += 32) {
            const float* src = q + h * ldq + c;
            __m512 even, odd;
            deinterleave32(_mm512_maskz_loadu_ps(lanes_mask(w - c), src),
                           _mm512_maskz_loadu_ps(lanes_mask(w - c - 16), src + 16), even, odd);
            _mm512_storeu_ps(qp + h * wp + c, _mm512_mul_ps(even, f));
            _mm512_storeu_ps(qp + h * wp + c + 16, _mm512_mul_ps(odd, f));
        }
    }
}

// out[0, rank) = the row `permuted` (round_up(rank, 32) lanes) in column order.
DSV2_AVX512 inline void unpermute_row(const float* permuted, std::int64_t rank, float* out) {
    for (std::int64_t c = 0; c < rank; c += 32) {
        __m512 lo, hi;
        interleave32(_mm512_loadu_ps(permuted + c), _mm512_loadu_ps(permuted + c + 16), lo, hi);
        _mm512_mask_storeu_ps(out + c, lanes_mask(rank - c), lo);
        _mm512_mask_storeu_ps(out + c + 16, lanes_mask(rank - c - 16), hi);
    }
}

#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
