// Attention on the CPU, and the latent-cache row movement it needs.
//
// One primitive serves every attention in the library: queries of one
// sequence at consecutive positions attend causally to that sequence's keys,
// with H query heads sharing Hk key/value heads. The naive MLA path calls it
// with Hk = H (decompressed K and V); the absorbed path with Hk = 1, the keys
// being the cached latent rows [c | k_pe] and the values their first C
// columns (a strided view, nothing copied) — MLA decode is MQA over the
// latent cache.
#pragma once

#include "dsv2/backend/cpu/flash_decode.hpp"
#include "dsv2/backend/cpu/linear.hpp"
#include "dsv2/backend/shapes.hpp"

#include <limits>

namespace dsv2 {

template <class A>
void attention(Context<cpu>& ctx,
               std::type_identity_t<View<const A, cpu, 3>> q,  // (n, H, Dk)
               std::type_identity_t<View<const A, cpu, 3>> k,  // (S, Hk, Dk)
               std::type_identity_t<View<const A, cpu, 3>> v,  // (S, Hk, Dv)
               std::int64_t first_position,  // position of q[0]; q[i] sees keys 0..first_position+i
               double scale,
               View<A, cpu, 3> out)      // (n, H, Dv)
{
    using namespace cpu_detail;
    const std::int64_t n = q.shape[0], heads = q.shape[1], dk = q.shape[2];
    const std::int64_t s_len = k.shape[0], kv_heads = k.shape[1], dv = v.shape[2];
    check_attention(q, k, v, first_position, out);
    const std::int64_t group = heads / kv_heads;
    const std::int64_t tasks = n * kv_heads;
    using Mat = RowMat<A>;
    // Decode over a long context (fewer tasks than threads): split the keys
    // across the threads and merge the partial softmaxes (flash_decode.hpp).
    if (tasks < ctx.threads && first_position + 1 >= 2 * kMinKeysPerSplit) {
        for (std::int64_t task = 0; task < tasks; ++task) {
            const std::int64_t i = task / kv_heads, g = task % kv_heads;
            attention_split_task<A>(ctx.threads, &q.data[i * q.stride[0] + g * group * q.stride[1]], q.stride[1],
                                    &k.data[g * k.stride[1]], k.stride[0], &v.data[g * v.stride[1]], v.stride[0],
                                    &out.data[i * out.stride[0] + g * group * out.stride[1]], out.stride[1], group, dk,
                                    dv, first_position + i + 1, static_cast<A>(scale));
        }
        return;
    }
    // Otherwise one task per block of up to kQueryBlock consecutive queries
    // and key head: the block's scores and its weighted values are GEMMs.
    // The keys every query of the block sees go through the GEMM; the causal
    // triangle past them (at most kQueryBlock - 1 keys) is masked by
    // assignment and added row by row, so a query never multiplies a value
    // it cannot see. With fewer tasks than threads (short decode), Eigen's
    // GEMM gets the threads.
    constexpr std::int64_t kQueryBlock = 32;
    const std::int64_t query_blocks = (n + kQueryBlock - 1) / kQueryBlock;
    const std::int64_t tasks_blocked = query_blocks * kv_heads;
    const bool outer_parallel = tasks_blocked >= ctx.threads && n * heads * s_len * (dk + dv) >= kParallelWork;
    using MapC = Eigen::Map<const Mat, Eigen::Unaligned, Eigen::OuterStride<>>;
#pragma omp parallel num_threads(ctx.threads) if (outer_parallel)
    {
        Mat scores;
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t task = 0; task < tasks_blocked; ++task) {
            const std::int64_t i0 = task / kv_heads * kQueryBlock, g = task % kv_heads;
            const std::int64_t rows = std::min(kQueryBlock, n - i0);
            const std::int64_t common = first_position + i0 + 1, last = common + rows - 1;
            const MapC kg(&k.data[g * k.stride[1]], last, dk, Eigen::OuterStride<>(k.stride[0]));
            const MapC vg(&v.data[g * v.stride[1]], last, dv, Eigen::OuterStride<>(v.stride[0]));
            // Each query of the block has `group` heads sharing key head g.
            for (std::int64_t h = 0; h < group; ++h) {
                const std::int64_t head = g * group + h;
                const MapC qb(&q.data[i0 * q.stride[0] + head * q.stride[1]], rows, dk, Eigen::OuterStride<>(q.stride[0]));
                Eigen::Map<Mat, Eigen::Unaligned, Eigen::OuterStride<>> ob(
                    &out.data[i0 * out.stride[0] + head * out.stride[1]], rows, dv, Eigen::OuterStride<>(out.stride[0]));
                scores.noalias() = (qb * kg.transpose()) * static_cast<A>(scale);  // (rows, last)
                for (std::int64_t r = 0; r < rows; ++r) {
                    const std::int64_t visible = common + r;
                    auto seen = scores.row(r).head(visible);
                    const A mx = seen.maxCoeff();
                    seen = (seen.array() - mx).exp();
                    seen /= seen.sum();
                    scores.row(r).tail(last - visible).setZero();
                }
                ob.noalias() = scores.leftCols(common) * vg.topRows(common);
                for (std::int64_t r = 1; r < rows; ++r)
                    ob.row(r).noalias() += scores.row(r).segment(common, r) * vg.middleRows(common, r);
            }
        }
    }
}

// pages[slot / page_size, slot % page_size, :] = rows[i] for each token i.
template <class T, class A>
void cache_write(Context<cpu>& ctx,
                 View<const A, cpu, 2> rows,               // (N, W)
                 View<const std::int64_t, cpu, 1> slots,   // (N)
                 View<T, cpu, 3> pages)                    // (P, page_size, W)
{
    const std::int64_t n = rows.shape[0], w = rows.shape[1];
    const std::int64_t page = pages.shape[1];
    check_cache_write(rows, slots, pages);
    // A Step built by hand (research code calling a layer directly) can
    // carry any slot: check them all before writing one, outside the
    // parallel loop (an exception must not leave an OpenMP region).
    for (std::int64_t i = 0; i < n; ++i) {
        DSV2_CHECK(slots(i) >= 0 && slots(i) < pages.shape[0] * page, RangeError,
                   "cache_write: token {} has cache slot {}, outside the {} slots of {} pages", i, slots(i),
                   pages.shape[0] * page, pages.shape[0]);
    }
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * w > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t slot = slots(i);
        T* dst = pages.data + slot * w;
        const A* src = rows.data + i * rows.stride[0];
        for (std::int64_t j = 0; j < w; ++j) dst[j] = convert<T>(src[j]);
    }
}

// out[j] = the cached row at position j of one sequence, j < out.shape[0].
template <class A, class T>
void cache_gather(Context<cpu>& ctx,
                  View<const T, cpu, 3> pages,                   // (P, page_size, W)
                  View<const std::int32_t, cpu, 1> block_table,  // (blocks)
                  View<A, cpu, 2> out)                           // (S, W)
{
    const std::int64_t s_len = out.shape[0], w = out.shape[1], page = pages.shape[1];
    check_cache_gather(pages, block_table, out);
    for (std::int64_t b = 0; b * page < s_len; ++b) {
        DSV2_CHECK(block_table(b) >= 0 && block_table(b) < pages.shape[0], RangeError,
                   "cache_gather: block table entry {} is page {}, outside the cache's pages [0, {})", b,
                   block_table(b), pages.shape[0]);
    }
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (s_len * w > 65536)
    for (std::int64_t j = 0; j < s_len; ++j) {
        const std::int64_t block = block_table(j / page);
        const T* src = pages.data + (block * page + j % page) * w;
        A* dst = out.data + j * out.stride[0];
        for (std::int64_t c = 0; c < w; ++c) dst[c] = convert<A>(src[c]);
    }
}

}  // namespace dsv2
