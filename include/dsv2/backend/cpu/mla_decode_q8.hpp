// MLA decode over an 8-bit latent cache (core/latent_q8.hpp), on the CPU: the
// same attention as mla_decode.hpp — one new token per sequence, its absorbed
// query [q_nope·W_UK | q_pe] over the sequence's cached rows read in place
// from their pages — with rows of LatentQ8Format::row_bytes() bytes.
//
// Two implementations:
//   - AVX-512 VNNI and a rank that is a multiple of 64 (DeepSeek-V2 and
//     V2-Lite): mla_decode_q8_vnni.hpp, both products in 8-bit integer
//     arithmetic, q and P rounded to 8 bits;
//   - otherwise rows dequantized a tile at a time and the Eigen path of
//     mla_decode.hpp, exact over the dequantized rows.
// Long contexts are split over the threads and merged (flash-decoding).
#pragma once

#include "dsv2/backend/cpu/mla_decode.hpp"
#include "dsv2/backend/cpu/mla_decode_q8_vnni.hpp"
#include "dsv2/core/latent_q8.hpp"

#include <cmath>
#include <limits>
#include <vector>

namespace dsv2 {

namespace cpu_detail {

#if DSV2_X86_KERNELS
// Below this many keys per thread the q8 path does not split.
inline constexpr std::int64_t kMinKeysPerQ8Split = 512;

// Whether rows of this rank take the VNNI kernels (mla_decode_q8_vnni.hpp).
inline bool use_q8_vnni(std::int64_t rank) { return has_avx512_vnni() && rank % 64 == 0; }

// The rope lanes' product in vdpbf16ps where the CPU has it; tests turn this
// off to check the f32 path on such CPUs too.
inline bool q8_bf16_rope_allowed = true;

// Floats of the buffer behind a Q8Query.
inline std::int64_t q8_query_floats(const LatentQ8Format& f) {
    return f.rank * 4 + f.groups() * 32 + f.rope * 16 + f.rope / 2 * 16;
}

// Query rows [0, nh) of q (row stride ldq), times `scale`, into the
// heads-in-lanes form of Q8Query, in `buf` (q8_query_floats(f) floats).
DSV2_AVX512 inline Q8Query prepare_q8_query(const float* q, std::int64_t ldq, std::int64_t nh,
                                            const LatentQ8Format& f, float scale, float* buf) {
    auto* q8 = reinterpret_cast<std::int32_t*>(buf);                   // (rank / 4, 16) words
    auto* offset = reinterpret_cast<std::int32_t*>(buf + f.rank * 4);  // (groups, 16)
    float* qscale = buf + f.rank * 4 + f.groups() * 16;                // (groups, 16)
    float* rope = qscale + f.groups() * 16;                            // (rope, 16)
    auto* rope_pairs = reinterpret_cast<std::uint32_t*>(rope + f.rope * 16);  // (rope / 2, 16)
    std::fill(buf, buf + q8_query_floats(f), 0.0f);
    const std::int64_t g_len = f.group;  // a multiple of 64 on this path
    const __m512 sv = _mm512_set1_ps(scale);
    for (std::int64_t h = 0; h < nh; ++h) {
        const float* qh = q + h * ldq;
        for (std::int64_t g = 0; g < f.groups(); ++g) {
            // |q| max over the group; a NaN or infinity anywhere makes the
            // scale NaN, so every score is NaN, as in f32.
            __m512 amax = _mm512_setzero_ps(), bad = _mm512_setzero_ps();
            for (std::int64_t c = g * g_len; c < (g + 1) * g_len; c += 16) {
                const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(qh + c), sv);
                amax = _mm512_maskz_max_ps(0xffff, amax, _mm512_abs_ps(x));
                bad = _mm512_add_ps(bad, _mm512_sub_ps(x, x));  // NaN where x is not finite
            }
            const float a = hmax(amax);
            const bool finite = std::isfinite(hsum(bad)) && std::isfinite(a);
            qscale[g * 16 + h] = finite ? a / 127.0f : std::numeric_limits<float>::quiet_NaN();
            const __m512 inv = _mm512_set1_ps(finite && a > 0.0f ? 127.0f / a : 0.0f);
            __m512i sum = _mm512_setzero_si512();
            for (std::int64_t c = g * g_len; c < (g + 1) * g_len; c += 16) {
                // Round to nearest (|x · inv| ≤ 127), then 16 int8 = 4 words.
                const __m512i v = _mm512_maskz_cvtps_epi32(0xffff, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(qh + c), sv), inv));
                sum = _mm512_add_epi32(sum, v);
                alignas(16) std::int32_t words[4];
                _mm_store_si128(reinterpret_cast<__m128i*>(words), _mm512_maskz_cvtepi32_epi8(0xffff, v));
                for (int k = 0; k < 4; ++k) q8[(c / 4 + k) * 16 + h] = words[k];
            }
            offset[g * 16 + h] = static_cast<std::int32_t>(128 * hsum_epi32(sum));  // the +128 of every cache byte, times Σq
        }
        for (std::int64_t d = 0; d < f.rope; ++d) rope[d * 16 + h] = qh[f.rank + d] * scale;
        for (std::int64_t j = 0; j < f.rope / 2; ++j)
            rope_pairs[j * 16 + h] = bf16_pair(rope[2 * j * 16 + h], rope[(2 * j + 1) * 16 + h]);
    }
    return Q8Query{reinterpret_cast<const std::uint8_t*>(q8), offset, qscale, rope, rope_pairs};
}

// One sequence on AVX-512 VNNI: head blocks of 16, the context split over
// the threads within each block.
inline void mla_decode_q8_seq(Context<cpu>& ctx, const float* q, std::int64_t ldq, std::int64_t heads,
                              const LatentQ8Format& f, const std::uint8_t* pages, std::int64_t page,
                              const std::int32_t* table, std::int64_t len, float scale, float* out,
                              std::int64_t out_ld) {
    float* qbuf = f32_scratch<kScratchQuery>(q8_query_floats(f));
    const bool bf16_rope = q8_bf16_rope_allowed && has_avx512_bf16() && f.rope % 2 == 0;
    Q8Query qq;
    decode_lane_blocks(
        ctx, heads, f.rank, len, page, kMinKeysPerQ8Split, 4, out, out_ld,
        [&](std::int64_t h0, std::int64_t nh) { qq = prepare_q8_query(q + h0 * ldq, ldq, nh, f, scale, qbuf); },
        [&](std::int64_t s0, std::int64_t s1, float* o, float* max, float* sum) {
            if (bf16_rope) decode_split_q8<true>(qq, f, pages, page, table, s0, s1, o, max, sum);
            else decode_split_q8<false>(qq, f, pages, page, table, s0, s1, o, max, sum);
        });
}
#endif

}  // namespace cpu_detail

// out[b, h] = softmax(scale · q[b, h] · Kᵀ) V over the first lengths[b] rows
// of sequence b in an 8-bit latent cache: pages (P, page_size, row bytes of
// LatentQ8Format{C, Dr}), K the dequantized rows, V their first C lanes.
inline void mla_decode_q8(Context<cpu>& ctx,
                          View<const float, cpu, 3> q,                    // (B, H, C+Dr)
                          View<const std::uint8_t, cpu, 3> pages,         // (P, page_size, row bytes)
                          View<const std::int32_t, cpu, 2> block_tables,  // (B, max_blocks)
                          const std::vector<std::int64_t>& lengths,       // (B), host
                          double scale,
                          View<float, cpu, 3> out)                        // (B, H, C)
{
    using namespace cpu_detail;
    const std::int64_t batch = q.shape[0], heads = q.shape[1], w = q.shape[2], rank = out.shape[2];
    const LatentQ8Format f = LatentQ8Format::make(rank, w - rank);
    DSV2_CHECK(pages.shape[2] == f.row_bytes(), ShapeError,
               "mla_decode_q8: pages {}: a row of rank {} and rope {} is {} bytes, the pages hold {}",
               shape_str(pages.shape), rank, w - rank, f.row_bytes(), pages.shape[2]);
    check_paged_decode("mla_decode_q8", q, pages, f.row_bytes(), block_tables, lengths, out);
    const std::int64_t page = pages.shape[1];
    for (std::int64_t b = 0; b < batch; ++b) {
        const std::int64_t len = lengths[static_cast<std::size_t>(b)];
        const std::int32_t* table = block_tables.data + b * block_tables.stride[0];
        check_block_table("mla_decode_q8", b, table, len, page, pages.shape[0]);
        const float* qb = q.data + b * q.stride[0];
        float* ob = out.data + b * out.stride[0];
#if DSV2_X86_KERNELS
        if (use_q8_vnni(rank)) {
            mla_decode_q8_seq(ctx, qb, q.stride[1], heads, f, pages.data, page, table, len, static_cast<float>(scale),
                              ob, out.stride[1]);
            continue;
        }
#endif
        // The rows dequantized, a tile at a time.
        decode_sequence_rows(ctx, qb, q.stride[1], heads, w, rank, len, page, static_cast<float>(scale), ob,
                             out.stride[1], [&](std::int64_t j, std::int64_t n, float* keys) {
                                 const std::int64_t in_page = j % page, rows = std::min(n, page - in_page);
                                 const std::uint8_t* src =
                                     pages.data + (static_cast<std::int64_t>(table[j / page]) * page + in_page) *
                                                      f.row_bytes();
                                 for (std::int64_t i = 0; i < rows; ++i)
                                     dequantize_latent_row(f, src + i * f.row_bytes(), keys + i * w);
                                 return rows;
                             });
    }
}

// The arithmetic of MLA decode (mla_decode, mla_decode_q8) under this
// context over a cache of element type T — or of 8-bit rows — whose rows are
// w lanes, `rank` of them values: in words, for reports such as `dsv2 bench`.
template <class T>
const char* mla_decode_arithmetic(const Context<cpu>& ctx, bool int8_rows, std::int64_t w, std::int64_t rank) {
    using namespace cpu_detail;
#if DSV2_X86_KERNELS
    if (int8_rows)
        return use_q8_vnni(rank) ? "int8 dot products, q and P rounded to 8 bits" : "f32 over the dequantized rows";
    if constexpr (std::is_same_v<T, bf16>) {
        if (use_bf16_dot(ctx, w, rank)) return "bf16 dot products, q and P rounded to bf16";
        if (has_avx512()) return "exact f32 products";
    }
#else
    (void)ctx, (void)w, (void)rank;
    if (int8_rows) return "f32 over the dequantized rows";
#endif
    return "exact f32 products";
}

}  // namespace dsv2
