// MLA decode straight from the paged latent cache, on the CPU: one new token
// per sequence, its absorbed query [q_nope·W_UK | q_pe] (H heads of C + Dr)
// attending over the sequence's cached rows [c | k_pe], whose first C lanes
// are also the values. The rows are read in place from their pages, a tile
// at a time, widened into an L2-resident buffer: nothing of the context is
// gathered or written back to memory, so a long context costs its cache bytes
// (2 x 576 per token in bf16) and its arithmetic, not three f32 copies.
//
// Every head shares the tile (MQA with one latent head), so a tile is
// S = Q Kᵀ (H x tile) and O += P V (H x C) with an online softmax between
// them. Long contexts are split over the threads, each with its own running
// max, sum and output, merged at the end (flash-decoding).
//
// Three implementations:
//   - a bf16 cache on an AVX512_BF16 CPU where bf16 dot products are measured
//     to pay (Context<cpu>::bf16_cache_products): mla_decode_bf16_dot.hpp,
//     heads in lanes, q and P rounded to bf16, about twice the exact
//     kernel's rate there;
//   - a bf16 cache on other AVX-512 CPUs: the hand-written kernels of
//     mla_decode_avx512.hpp — 128-row tiles of row pointers across pages,
//     widened once into L2 and the next one prefetched, exact f32 products,
//     about 70 GMAC/s on 2 cores with cold caches;
//   - every other element type or CPU: the Eigen path below (page-sized
//     tiles widened to f32, two small GEMMs, ~16 GMAC/s).
// The AVX-512 paths split a context over the threads from 2 x 512 keys, the
// Eigen path from 2 x 256.
#pragma once

#include "dsv2/backend/cpu/flash_decode.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/cpu/linear.hpp"
#include "dsv2/backend/cpu/mla_decode_avx512.hpp"
#include "dsv2/backend/cpu/mla_decode_bf16_dot.hpp"
#include "dsv2/backend/cpu/mla_decode_lanes.hpp"
#include "dsv2/backend/cpu/scratch.hpp"
#include "dsv2/backend/shapes.hpp"

#include <cmath>
#include <limits>
#include <vector>

namespace dsv2 {

namespace cpu_detail {

// Rows per tile: one default cache page (64 rows x 576 x 4 bytes = 144 KiB).
inline constexpr std::int64_t kDecodeTile = 64;

// Keys per split when `len` keys are split `parts` ways: a whole number of
// pages, so a split's tiles never share a page with its neighbour's.
inline std::int64_t page_aligned_chunk(std::int64_t len, int parts, std::int64_t page) {
    return ((len + parts - 1) / parts + page - 1) / page * page;
}

// Every page the first `len` rows of sequence `b` use lies in [0, n_pages).
inline void check_block_table(const char* op, std::int64_t b, const std::int32_t* table, std::int64_t len,
                              std::int64_t page, std::int64_t n_pages) {
    for (std::int64_t p = 0; p * page < len; ++p) {
        DSV2_CHECK(table[p] >= 0 && table[p] < n_pages, RangeError,
                   "{}: sequence {}, block table entry {} is page {}, outside the cache's pages [0, {})", op, b, p,
                   table[p], n_pages);
    }
}

// The running softmax state of one split: max and sum per head, and the
// unnormalised output.
struct DecodePartial {
    RowMat<float> o;             // (H, C)
    std::vector<float> max, sum;  // (H)
};

// Keys [s0, s1) of one sequence into `part`; load_rows(j, n, keys) widens
// the rows from position j on into keys (at most n, and not past the end of
// j's page) and returns how many it wrote.
template <class LoadRows>
void decode_split_rows(const float* q, std::int64_t qs, std::int64_t heads, std::int64_t w, std::int64_t rank,
                       std::int64_t s0, std::int64_t s1, float scale, DecodePartial& part, LoadRows&& load_rows) {
    using CMap = Eigen::Map<const RowMat<float>, Eigen::Unaligned, Eigen::OuterStride<>>;
    const CMap qm(q, heads, w, Eigen::OuterStride<>(qs));
    part.o = RowMat<float>::Zero(heads, rank);
    part.max.assign(static_cast<std::size_t>(heads), -std::numeric_limits<float>::infinity());
    part.sum.assign(static_cast<std::size_t>(heads), 0.0f);
    RowMat<float> keys(kDecodeTile, w), scores(heads, kDecodeTile);
    for (std::int64_t j = s0; j < s1;) {
        const std::int64_t len = load_rows(j, std::min(kDecodeTile, s1 - j), keys.data());
        const auto k = keys.topRows(len);
        auto s = scores.leftCols(len);
        s.noalias() = (qm * k.transpose()) * scale;
        for (std::int64_t h = 0; h < heads; ++h) {
            auto row = s.row(h);
            float& m = part.max[static_cast<std::size_t>(h)];
            const float m_new = std::max(m, row.maxCoeff());
            const float correction = std::exp(m - m_new);  // 0 on the first tile
            row = (row.array() - m_new).exp();
            part.sum[static_cast<std::size_t>(h)] = part.sum[static_cast<std::size_t>(h)] * correction + row.sum();
            part.o.row(h) *= correction;
            m = m_new;
        }
        part.o.noalias() += s * k.leftCols(rank);
        j += len;
    }
}

// Merges the splits' softmax states into out (H, C), one head at a time.
inline void merge_partials(const std::vector<DecodePartial>& partial, std::int64_t heads, std::int64_t rank,
                           float* out, std::int64_t out_ld) {
    for (std::int64_t h = 0; h < heads; ++h) {
        float m = -std::numeric_limits<float>::infinity();
        for (const auto& part : partial) m = std::max(m, part.max[static_cast<std::size_t>(h)]);
        float denom = 0;
        float* o = out + h * out_ld;
        std::fill(o, o + rank, 0.0f);
        for (const auto& part : partial) {
            if (part.sum[static_cast<std::size_t>(h)] == 0) continue;  // an empty split
            const float f = std::exp(part.max[static_cast<std::size_t>(h)] - m);
            denom += f * part.sum[static_cast<std::size_t>(h)];
            for (std::int64_t c = 0; c < rank; ++c) o[c] += f * part.o(h, c);
        }
        for (std::int64_t c = 0; c < rank; ++c) o[c] /= denom;
    }
}

// One sequence of `len` keys on the Eigen path: splits of at least
// kMinKeysPerSplit keys, page-aligned, merged into out (H, C). load_rows is
// decode_split_rows' loader.
template <class LoadRows>
void decode_sequence_rows(Context<cpu>& ctx, const float* q, std::int64_t ldq, std::int64_t heads, std::int64_t w,
                          std::int64_t rank, std::int64_t len, std::int64_t page, float scale, float* out,
                          std::int64_t out_ld, const LoadRows& load_rows) {
    const int parts = static_cast<int>(std::clamp<std::int64_t>(len / kMinKeysPerSplit, 1, ctx.threads));
    const std::int64_t chunk = page_aligned_chunk(len, parts, page);
    std::vector<DecodePartial> partial(static_cast<std::size_t>(parts));
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
    for (int p = 0; p < parts; ++p) {
        const std::int64_t s0 = std::min(len, p * chunk), s1 = std::min(len, s0 + chunk);
        decode_split_rows(q, ldq, heads, w, rank, s0, s1, scale, partial[static_cast<std::size_t>(p)], load_rows);
    }
    merge_partials(partial, heads, rank, out, out_ld);
}

#if DSV2_X86_KERNELS
// Merges the splits' softmax states into out (H, C); a split's output rows
// hold `ld` floats in the permuted lane order of mla_decode_avx512.hpp.
// `merged` holds ld floats of scratch (one head at a time).
inline void merge_splits(std::int64_t heads, std::int64_t rank, int parts, const float* o, std::int64_t ld,
                         const float* max, const float* sum, float* merged, float* out, std::int64_t out_ld) {
    for (std::int64_t h = 0; h < heads; ++h) {
        float m = -std::numeric_limits<float>::infinity();
        for (int p = 0; p < parts; ++p) m = std::max(m, max[p * heads + h]);
        float denom = 0;
        std::fill(merged, merged + ld, 0.0f);
        for (int p = 0; p < parts; ++p) {
            if (sum[p * heads + h] == 0) continue;  // an empty split
            const float f = std::exp(max[p * heads + h] - m);
            denom += f * sum[p * heads + h];
            const float* op = o + (p * heads + h) * ld;
            for (std::int64_t j = 0; j < ld; ++j) merged[j] += f * op[j];
        }
        for (std::int64_t j = 0; j < ld; ++j) merged[j] /= denom;
        unpermute_row(merged, rank, out + h * out_ld);
    }
}

// Below this many keys per thread the AVX-512 path does not split: 512 keys
// of 16 heads take about as long as waking a sleeping thread (~80 µs).
inline constexpr std::int64_t kMinKeysPerFastSplit = 512;

// The bf16 cache on AVX-512 (mla_decode_avx512.hpp), one sequence.
inline void mla_decode_bf16_seq(Context<cpu>& ctx, const float* q, std::int64_t ldq, std::int64_t heads,
                                std::int64_t w, std::int64_t rank, const bf16* pages, std::int64_t page,
                                const std::int32_t* table, std::int64_t len, float scale, float* out,
                                std::int64_t out_ld) {
    const std::int64_t wp = (w + 31) / 32 * 32, rp = (rank + 31) / 32 * 32;
    const int parts = static_cast<int>(std::clamp<std::int64_t>(len / kMinKeysPerFastSplit, 1, ctx.threads));
    const std::int64_t chunk = page_aligned_chunk(len, parts, page);
    // Scratch of the calling thread, kept across calls: 64-byte aligned (the
    // score kernel loads whole lines of the query) and no page faults per step.
    float* qp = f32_scratch<kScratchQuery>(heads * wp);
    permute_query(q, ldq, heads, w, scale, qp);
    float* o = f32_scratch<kScratchSplits>(parts * heads * (rp + 2) + rp);
    float* max = o + parts * heads * rp;
    float* sum = max + parts * heads;
    float* merged = sum + parts * heads;  // (rp), merge_splits' row
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
    for (int p = 0; p < parts; ++p) {
        const std::int64_t s0 = std::min(len, p * chunk), s1 = std::min(len, s0 + chunk);
        decode_split_bf16(qp, heads, w, rank, pages, page, table, s0, s1, o + p * heads * rp, max + p * heads,
                          sum + p * heads);
    }
    merge_splits(heads, rank, parts, o, rp, max, sum, merged, out, out_ld);
}

// One sequence through a heads-in-lanes kernel (mla_decode_lanes.hpp): head
// blocks of 16, the context split over the threads within each block.
// prepare(h0, nh) readies the query of heads [h0, h0 + nh); split(s0, s1, o,
// max, sum) leaves the softmax state of rows [s0, s1) for that block, its
// channels in lane_channel_of's order for `regroup_rows`.
template <class Prepare, class Split>
void decode_lane_blocks(Context<cpu>& ctx, std::int64_t heads, std::int64_t rank, std::int64_t len,
                        std::int64_t page, std::int64_t min_keys_per_split, std::int64_t regroup_rows, float* out,
                        std::int64_t out_ld, Prepare&& prepare, Split&& split) {
    const int parts = static_cast<int>(
        std::clamp<std::int64_t>(len / min_keys_per_split, 1, std::min<std::int64_t>(ctx.threads, kMaxLaneSplits)));
    const std::int64_t chunk = page_aligned_chunk(len, parts, page);
    // Per split (rank, 16), then max and sum (16 each), then the merge's (rank, 16).
    float* o = f32_scratch<kScratchSplits>((parts * (rank + 2) + rank) * kLaneHeads);
    float* max = o + parts * rank * kLaneHeads;
    float* sum = max + parts * kLaneHeads;
    float* merged = sum + parts * kLaneHeads;
    for (std::int64_t h0 = 0; h0 < heads; h0 += kLaneHeads) {
        const std::int64_t nh = std::min(kLaneHeads, heads - h0);
        prepare(h0, nh);
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
        for (int p = 0; p < parts; ++p) {
            const std::int64_t s0 = std::min(len, p * chunk), s1 = std::min(len, s0 + chunk);
            split(s0, s1, o + p * rank * kLaneHeads, max + p * kLaneHeads, sum + p * kLaneHeads);
        }
        merge_lane_splits(parts, rank, regroup_rows, nh, o, max, sum, merged, out + h0 * out_ld, out_ld);
    }
}

// Whether a bf16 cache of rows of w lanes (rank of them values) takes the
// bf16 dot-product kernel (mla_decode_bf16_dot.hpp) under this context.
inline bool use_bf16_dot(const Context<cpu>& ctx, std::int64_t w, std::int64_t rank) {
    if (w % 2 != 0 || rank % 32 != 0) return false;
    switch (ctx.bf16_cache_products) {
        case Bf16CacheProducts::fastest: return bf16_dot_pays();
        case Bf16CacheProducts::bf16_dot: return has_avx512_bf16();
        case Bf16CacheProducts::exact: return false;
    }
    return false;
}

// The bf16 cache through bf16 dot products, one sequence.
inline void mla_decode_bf16_dot_seq(Context<cpu>& ctx, const float* q, std::int64_t ldq, std::int64_t heads,
                                    std::int64_t w, std::int64_t rank, const bf16* pages, std::int64_t page,
                                    const std::int32_t* table, std::int64_t len, float scale, float* out,
                                    std::int64_t out_ld) {
    auto* qpairs = reinterpret_cast<std::uint32_t*>(f32_scratch<kScratchQuery>(w / 2 * kLaneHeads));
    decode_lane_blocks(
        ctx, heads, rank, len, page, kMinKeysPerFastSplit, 2, out, out_ld,
        [&](std::int64_t h0, std::int64_t nh) { prepare_bf16_query(q + h0 * ldq, ldq, nh, w, scale, qpairs); },
        [&](std::int64_t s0, std::int64_t s1, float* o, float* max, float* sum) {
            decode_split_bf16_dot(qpairs, w, rank, pages, page, table, s0, s1, o, max, sum);
        });
}
#endif

}  // namespace cpu_detail

// out[b, h] = softmax(scale · q[b, h] · Kᵀ) V over the first lengths[b] cached
// rows of sequence b (block table row b), the query at the last position.
template <class T>
void mla_decode(Context<cpu>& ctx,
                View<const float, cpu, 3> q,                    // (B, H, C+Dr)
                View<const T, cpu, 3> pages,                    // (P, page_size, C+Dr)
                View<const std::int32_t, cpu, 2> block_tables,  // (B, max_blocks)
                const std::vector<std::int64_t>& lengths,       // (B), host
                double scale,
                View<float, cpu, 3> out)                        // (B, H, C)
{
    using namespace cpu_detail;
    check_mla_decode(q, pages, block_tables, lengths, out);
    const std::int64_t batch = q.shape[0], heads = q.shape[1], w = q.shape[2], rank = out.shape[2];
    const std::int64_t page = pages.shape[1];
    for (std::int64_t b = 0; b < batch; ++b) {
        const std::int64_t len = lengths[static_cast<std::size_t>(b)];
        const std::int32_t* table = block_tables.data + b * block_tables.stride[0];
        check_block_table("mla_decode", b, table, len, page, pages.shape[0]);
#if DSV2_X86_KERNELS
        if constexpr (std::is_same_v<T, bf16>) {
            if (use_bf16_dot(ctx, w, rank)) {
                mla_decode_bf16_dot_seq(ctx, q.data + b * q.stride[0], q.stride[1], heads, w, rank, pages.data, page,
                                        table, len, static_cast<float>(scale), out.data + b * out.stride[0],
                                        out.stride[1]);
                continue;
            }
            if (has_avx512()) {
                mla_decode_bf16_seq(ctx, q.data + b * q.stride[0], q.stride[1], heads, w, rank, pages.data, page,
                                    table, len, static_cast<float>(scale), out.data + b * out.stride[0],
                                    out.stride[1]);
                continue;
            }
        }
#endif
        // The rows widened in place; a tile never crosses a page, so its rows
        // are contiguous in memory.
        decode_sequence_rows(ctx, q.data + b * q.stride[0], q.stride[1], heads, w, rank, len, page,
                             static_cast<float>(scale), out.data + b * out.stride[0], out.stride[1],
                             [&](std::int64_t j, std::int64_t n, float* keys) {
                                 const std::int64_t in_page = j % page, rows = std::min(n, page - in_page);
                                 widen_f32(pages.data + (static_cast<std::int64_t>(table[j / page]) * page + in_page) * w,
                                           keys, rows * w);
                                 return rows;
                             });
    }
}

}  // namespace dsv2
