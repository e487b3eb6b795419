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
// Two implementations: a bf16 cache (the default for bf16 and int8 models) on
// an AVX-512 CPU takes the hand-written kernels of mla_decode_avx512.hpp —
// 128-row tiles of row pointers across pages, widened once into L2 and the
// next one prefetched, exact f32 products, about 70 GMAC/s on 2 cores with
// cold caches, splitting from 2 x 512 keys; every other element type or
// CPU takes the Eigen path below (page-sized tiles widened to f32, two small
// GEMMs, ~16 GMAC/s), splitting from 2 x 256 keys.
#pragma once

#include "dsv2/backend/cpu/flash_decode.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/cpu/linear.hpp"
#include "dsv2/backend/cpu/mla_decode_avx512.hpp"
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
