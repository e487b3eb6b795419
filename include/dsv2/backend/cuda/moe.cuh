// Mixture-of-experts plumbing on the GPU: routing with a per-token policy on
// the device, grouping (token, slot) entries by expert with a CUB radix sort,
// and the gather / weighted scatter-add around each expert's batch.
// Same contracts as backend/cpu/moe.hpp.
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/elementwise.cuh"

#include <cub/device/device_radix_sort.cuh>

#include <bit>
#include <vector>

namespace dsv2 {
namespace cuda_detail {

// One thread per token runs the policy (a DSV2_HD function of layers/router.hpp).
template <class Policy, class A>
__global__ void route_kernel(Policy policy, const A* logits, const A* bias, std::int64_t n, int e, int k, A* scores,
                             std::int32_t* idx, A* weight) {
    const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
    if (t >= n) return;
    policy.route(logits + t * e, bias, e, scores + t * e, idx + t * k, weight + t * k);
}

// Sort keys (expert ids) and values (entry numbers); out-of-range ids are
// reported through `bad` (count, and one offending id) and sorted as 0.
// (Templates, so that every translation unit may define them.)
template <class I>
__global__ void expert_keys_kernel(const I* idx, std::int64_t entries, I n_experts, I* keys, I* values, I* bad) {
    const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
    if (i >= entries) return;
    I x = idx[i];
    if (x < 0 || x >= n_experts) {
        atomicAdd(bad, 1);
        atomicExch(bad + 1, x);
        x = 0;
    }
    keys[i] = x;
    values[i] = static_cast<I>(i);
}

// offsets[x] = first sorted position whose key is >= x, for x in 0..E.
template <class I>
__global__ void expert_offsets_kernel(const I* sorted, std::int64_t entries, I n_experts, std::int64_t* offsets) {
    const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
    if (i >= entries) return;
    const I key = sorted[i];
    const I prev = i == 0 ? -1 : sorted[i - 1];
    for (I x = prev + 1; x <= key; ++x) offsets[x] = i;
    if (i == entries - 1)
        for (I x = key + 1; x <= n_experts; ++x) offsets[x] = entries;
}

template <class A>
__global__ void gather_rows_kernel(const A* x, std::int64_t ldx, const std::int32_t* entries, std::int64_t se,
                                   std::int64_t k, A* out, std::int64_t ldo, std::int64_t m, std::int64_t d) {
    DSV2_CUDA_FOR_2D(i, j, m, d) { out[i * ldo + j] = x[(entries[i * se] / k) * ldx + j]; }
}

// Within one expert's batch a token appears at most once: no two threads
// add to the same element, so no atomics.
template <class A>
__global__ void scatter_add_rows_kernel(const A* src, std::int64_t lds, const std::int32_t* entries, std::int64_t se,
                                        const A* weight, std::int64_t k, A* y, std::int64_t ldy, std::int64_t m,
                                        std::int64_t d) {
    DSV2_CUDA_FOR_2D(i, j, m, d) {
        const std::int32_t e = entries[i * se];
        y[(e / k) * ldy + j] += weight[e] * src[i * lds + j];
    }
}

}  // namespace cuda_detail

// Runs `policy.route` for every token on the device. The policy is copied to
// the kernel by value, so it must be trivially copyable with a DSV2_HD route.
template <class Policy, class A>
void route(Context<cuda>& ctx, const Policy& policy,
           std::type_identity_t<View<const A, cuda, 2>> logits,  // (N, E)
           const A* bias,                                        // (E) device, or nullptr
           View<A, cuda, 2> scores,                              // (N, E)
           View<std::int32_t, cuda, 2> idx,                      // (N, K)
           View<A, cuda, 2> weight)                              // (N, K)
{
    static_assert(std::is_trivially_copyable_v<Policy>, "dsv2 cuda: a routing policy is passed to a kernel by value");
    const std::int64_t n = logits.shape[0], e = logits.shape[1], k = idx.shape[1];
    DSV2_CHECK(scores.shape == logits.shape && weight.shape == idx.shape && idx.shape[0] == n &&
                   logits.contiguous() && scores.contiguous() && idx.contiguous() && weight.contiguous(),
               ShapeError, "route: logits {}, scores {}, idx {}, weight {}", shape_str(logits.shape),
               shape_str(scores.shape), shape_str(idx.shape), shape_str(weight.shape));
    if (n == 0) return;
    // Few threads per block: each holds the policy's per-token arrays in local memory.
    constexpr int threads = 64;
    cuda_detail::route_kernel<<<cuda_detail::blocks_for(n, threads), threads, 0, ctx.stream>>>(
        policy, logits.data, bias, n, static_cast<int>(e), static_cast<int>(k), scores.data, idx.data, weight.data);
    DSV2_CUDA_LAUNCHED();
}

// Stable radix sort of entries by expert: order[offsets[x] .. offsets[x+1])
// are the entries routed to expert x, in token order (as the CPU's counting
// sort). Offsets come back on the host: the MoE component loops there.
inline void group_by_expert(Context<cuda>& ctx,
                            View<const std::int32_t, cuda, 2> idx,  // (N, K)
                            std::int64_t n_experts,
                            View<std::int32_t, cuda, 1> order,      // (N*K)
                            std::vector<std::int64_t>& offsets)     // (E+1), host
{
    using namespace cuda_detail;
    const std::int64_t entries = idx.numel();
    DSV2_CHECK(order.shape[0] == entries && idx.contiguous() && order.stride[0] == 1, ShapeError,
               "group_by_expert: idx {}, order ({})", shape_str(idx.shape), order.shape[0]);
    DSV2_CHECK(n_experts > 0 && n_experts < INT32_MAX && entries < INT32_MAX, Unsupported,
               "group_by_expert: {} experts, {} entries", n_experts, entries);
    offsets.assign(static_cast<std::size_t>(n_experts + 1), 0);
    if (entries == 0) return;
    const int items = static_cast<int>(entries);
    const int end_bit = std::max(1, static_cast<int>(std::bit_width(static_cast<std::uint32_t>(n_experts - 1))));
    std::size_t cub_bytes = 0;
    DSV2_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), items, 0, end_bit,
                                                    ctx.stream));
    // Scratch: keys in, keys out, values in, offsets, the error report, CUB's temporaries.
    const std::size_t ids = align_up(static_cast<std::size_t>(entries) * sizeof(std::int32_t));
    const std::size_t offs = align_up(static_cast<std::size_t>(n_experts + 1) * sizeof(std::int64_t));
    char* base = static_cast<char*>(ctx.scratch(3 * ids + offs + 256 + cub_bytes));
    auto* keys_in = reinterpret_cast<std::int32_t*>(base);
    auto* keys_out = reinterpret_cast<std::int32_t*>(base + ids);
    auto* values_in = reinterpret_cast<std::int32_t*>(base + 2 * ids);
    auto* dev_offsets = reinterpret_cast<std::int64_t*>(base + 3 * ids);
    auto* bad = reinterpret_cast<std::int32_t*>(base + 3 * ids + offs);
    void* cub_temp = base + 3 * ids + offs + 256;

    DSV2_CUDA_CHECK(cudaMemsetAsync(bad, 0, 2 * sizeof(std::int32_t), ctx.stream));
    constexpr int threads = 256;
    expert_keys_kernel<<<blocks_for(entries, threads), threads, 0, ctx.stream>>>(
        idx.data, entries, static_cast<std::int32_t>(n_experts), keys_in, values_in, bad);
    DSV2_CUDA_LAUNCHED();
    DSV2_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, keys_in, keys_out, values_in, order.data,
                                                    items, 0, end_bit, ctx.stream));
    expert_offsets_kernel<<<blocks_for(entries, threads), threads, 0, ctx.stream>>>(
        keys_out, entries, static_cast<std::int32_t>(n_experts), dev_offsets);
    DSV2_CUDA_LAUNCHED();
    std::int32_t report[2] = {0, 0};
    copy_to_host(ctx, bad, report, 2);
    DSV2_CHECK(report[0] == 0, RangeError, "group_by_expert: expert id {} outside [0, {})", report[1], n_experts);
    copy_to_host(ctx, dev_offsets, offsets.data(), n_experts + 1);
}

// out[i] = x[entries[i] / K].
template <class A>
void gather_rows(Context<cuda>& ctx,
                 std::type_identity_t<View<const A, cuda, 2>> x,  // (N, D)
                 View<const std::int32_t, cuda, 1> entries,       // (M)
                 std::int64_t k,
                 View<A, cuda, 2> out)                            // (M, D)
{
    using namespace cuda_detail;
    const std::int64_t m = entries.shape[0], d = x.shape[1];
    DSV2_CHECK(out.shape[0] == m && out.shape[1] == d && x.rows_contiguous() && out.rows_contiguous(), ShapeError,
               "gather_rows: x {}, {} entries, out {}", shape_str(x.shape), m, shape_str(out.shape));
    if (m * d == 0) return;
    gather_rows_kernel<<<blocks_for(m * d, kThreads), kThreads, 0, ctx.stream>>>(
        x.data, x.stride[0], entries.data, entries.stride[0], k, out.data, out.stride[0], m, d);
    DSV2_CUDA_LAUNCHED();
}

// y[entries[i] / K] += weight[entries[i]] * src[i].
template <class A>
void scatter_add_rows(Context<cuda>& ctx,
                      std::type_identity_t<View<const A, cuda, 2>> src,     // (M, D)
                      View<const std::int32_t, cuda, 1> entries,            // (M)
                      std::type_identity_t<View<const A, cuda, 2>> weight,  // (N, K)
                      View<A, cuda, 2> y)                                   // (N, D)
{
    using namespace cuda_detail;
    const std::int64_t m = entries.shape[0], d = y.shape[1], k = weight.shape[1];
    DSV2_CHECK(src.shape[0] == m && src.shape[1] == d && weight.contiguous() && src.rows_contiguous() &&
                   y.rows_contiguous(),
               ShapeError, "scatter_add_rows: src {}, {} entries, y {}", shape_str(src.shape), m, shape_str(y.shape));
    if (m * d == 0) return;
    scatter_add_rows_kernel<<<blocks_for(m * d, kThreads), kThreads, 0, ctx.stream>>>(
        src.data, src.stride[0], entries.data, entries.stride[0], weight.data, k, y.data, y.stride[0], m, d);
    DSV2_CUDA_LAUNCHED();
}

}  // namespace dsv2
