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
// Floats of the buffer behind a Q8Query.
inline std::int64_t q8_query_floats(const LatentQ8Format& f) { return f.rank * 4 + f.groups() * 32 + f.rope * 16; }

// Query rows [0, nh) of q (row stride ldq), times `scale`, into the
// heads-in-lanes form of Q8Query, in `buf` (q8_query_floats(f) floats).
inline Q8Query prepare_q8_query(const float* q, std::int64_t ldq, std::int64_t nh, const LatentQ8Format& f,
                                float scale, float* buf) {
    auto* q8 = reinterpret_cast<std::uint8_t*>(buf);                        // (rank / 4, 16) words
    auto* offset = reinterpret_cast<std::int32_t*>(buf + f.rank * 4);      // (groups, 16)
    float* qscale = buf + f.rank * 4 + f.groups() * 16;                     // (groups, 16)
    float* rope = qscale + f.groups() * 16;                                 // (rope, 16)
    std::fill(buf, buf + q8_query_floats(f), 0.0f);
    const std::int64_t g_len = f.group;
    for (std::int64_t h = 0; h < nh; ++h) {
        const float* qh = q + h * ldq;
        for (std::int64_t g = 0; g < f.groups(); ++g) {
            float amax = 0.0f;
            bool finite = true;
            for (std::int64_t c = g * g_len; c < (g + 1) * g_len; ++c) {
                finite = finite && std::isfinite(qh[c] * scale);
                amax = std::max(amax, std::fabs(qh[c] * scale));
            }
            // A query lane that is not finite makes every score NaN, as in f32.
            qscale[g * 16 + h] = finite ? amax / 127.0f : std::numeric_limits<float>::quiet_NaN();
            const float inv = finite && amax > 0.0f ? 127.0f / amax : 0.0f;
            std::int32_t sum = 0;
            for (std::int64_t c = g * g_len; c < (g + 1) * g_len; ++c) {
                const auto v = static_cast<std::int32_t>(std::clamp(std::nearbyint(qh[c] * scale * inv), -127.0f, 127.0f));
                q8[(c / 4) * 64 + h * 4 + c % 4] = static_cast<std::uint8_t>(static_cast<std::int8_t>(v));
                sum += v;
            }
            offset[g * 16 + h] = 128 * sum;  // the +128 of every cache byte, times Σq
        }
        for (std::int64_t d = 0; d < f.rope; ++d) rope[d * 16 + h] = qh[f.rank + d] * scale;
    }
    return Q8Query{q8, offset, qscale, rope};
}

// Below this many keys per thread the q8 path does not split.
inline constexpr std::int64_t kMinKeysPerQ8Split = 512;

// One sequence on AVX-512 VNNI: head blocks of 16, the context split over
// the threads within each block.
inline void mla_decode_q8_seq(Context<cpu>& ctx, const float* q, std::int64_t ldq, std::int64_t heads,
                              const LatentQ8Format& f, const std::uint8_t* pages, std::int64_t page,
                              const std::int32_t* table, std::int64_t len, float scale, float* out,
                              std::int64_t out_ld) {
    const int parts = static_cast<int>(std::clamp<std::int64_t>(len / kMinKeysPerQ8Split, 1, ctx.threads));
    const std::int64_t chunk = ((len + parts - 1) / parts + page - 1) / page * page;
    float* qbuf = f32_scratch<kScratchQuery>(q8_query_floats(f));
    float* o = f32_scratch<kScratchSplits>(parts * (f.rank + 2) * 16);  // per split (rank, 16), then max, sum
    float* max = o + parts * f.rank * 16;
    float* sum = max + parts * 16;
    for (std::int64_t h0 = 0; h0 < heads; h0 += kQ8Heads) {
        const std::int64_t nh = std::min(kQ8Heads, heads - h0);
        const Q8Query qq = prepare_q8_query(q + h0 * ldq, ldq, nh, f, scale, qbuf);
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
        for (int p = 0; p < parts; ++p) {
            const std::int64_t s0 = std::min(len, p * chunk), s1 = std::min(len, s0 + chunk);
            decode_split_q8(qq, f, pages, page, table, s0, s1, o + p * f.rank * 16, max + p * 16, sum + p * 16);
        }
        for (std::int64_t h = 0; h < nh; ++h) {
            float m = -std::numeric_limits<float>::infinity();
            for (int p = 0; p < parts; ++p) m = std::max(m, max[p * 16 + h]);
            float denom = 0;
            float* oh = out + (h0 + h) * out_ld;
            std::fill(oh, oh + f.rank, 0.0f);
            for (int p = 0; p < parts; ++p) {
                if (sum[p * 16 + h] == 0) continue;  // an empty split
                const float fp = std::exp(max[p * 16 + h] - m);
                denom += fp * sum[p * 16 + h];
                const float* op = o + p * f.rank * 16;
                for (std::int64_t w = 0; w < f.rank; ++w) oh[q8_channel_of(w)] += fp * op[w * 16 + h];
            }
            for (std::int64_t c = 0; c < f.rank; ++c) oh[c] /= denom;
        }
    }
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
    DSV2_CHECK(rank < w && out.shape[0] == batch && out.shape[1] == heads && std::ssize(lengths) == batch &&
                   block_tables.shape[0] == batch && pages.contiguous() && q.stride[2] == 1 && out.stride[2] == 1 &&
                   block_tables.stride[1] == 1,
               ShapeError, "mla_decode_q8: q {}, pages {}, tables {}, {} lengths, out {}", shape_str(q.shape),
               shape_str(pages.shape), shape_str(block_tables.shape), lengths.size(), shape_str(out.shape));
    const LatentQ8Format f = LatentQ8Format::make(rank, w - rank);
    DSV2_CHECK(pages.shape[2] == f.row_bytes(), ShapeError,
               "mla_decode_q8: pages {}: a row of rank {} and rope {} is {} bytes, the pages hold {}",
               shape_str(pages.shape), rank, w - rank, f.row_bytes(), pages.shape[2]);
    const std::int64_t page = pages.shape[1];
    for (std::int64_t b = 0; b < batch; ++b) {
        const std::int64_t len = lengths[static_cast<std::size_t>(b)];
        DSV2_CHECK(len >= 1 && len <= block_tables.shape[1] * page, RangeError,
                   "mla_decode_q8: length {} outside 1..{}", len, block_tables.shape[1] * page);
        const std::int32_t* table = block_tables.data + b * block_tables.stride[0];
        for (std::int64_t p = 0; p * page < len; ++p) {
            DSV2_CHECK(table[p] >= 0 && table[p] < pages.shape[0], RangeError,
                       "mla_decode_q8: sequence {}, block table entry {} is page {}, outside the cache's pages [0, {})",
                       b, p, table[p], pages.shape[0]);
        }
        const float* qb = q.data + b * q.stride[0];
        float* ob = out.data + b * out.stride[0];
#if DSV2_X86_KERNELS
        if (has_avx512_vnni() && rank % 64 == 0) {
            mla_decode_q8_seq(ctx, qb, q.stride[1], heads, f, pages.data, page, table, len, static_cast<float>(scale),
                              ob, out.stride[1]);
            continue;
        }
#endif
        const int parts = static_cast<int>(std::clamp<std::int64_t>(len / kMinKeysPerSplit, 1, ctx.threads));
        const std::int64_t chunk = ((len + parts - 1) / parts + page - 1) / page * page;
        std::vector<DecodePartial> partial(static_cast<std::size_t>(parts));
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
        for (int p = 0; p < parts; ++p) {
            const std::int64_t s0 = std::min(len, p * chunk), s1 = std::min(len, s0 + chunk);
            decode_split_rows(qb, q.stride[1], heads, w, rank, s0, s1, static_cast<float>(scale),
                              partial[static_cast<std::size_t>(p)], [&](std::int64_t j, float* keys) {
                                  const std::int64_t in_page = j % page,
                                                     n = std::min({kDecodeTile, s1 - j, page - in_page});
                                  const std::uint8_t* src =
                                      pages.data + (static_cast<std::int64_t>(table[j / page]) * page + in_page) *
                                                       f.row_bytes();
                                  for (std::int64_t i = 0; i < n; ++i)
                                      dequantize_latent_row(f, src + i * f.row_bytes(), keys + i * w);
                                  return n;
                              });
        }
        merge_partials(partial, heads, rank, ob, out.stride[1]);
    }
}

}  // namespace dsv2
