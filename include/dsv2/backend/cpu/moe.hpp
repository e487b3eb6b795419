// Mixture-of-experts plumbing on the CPU: per-token routing with a policy,
// grouping (token, slot) entries by expert, and the gather / weighted
// scatter-add that move rows to and from each expert's batch.
//
// An "entry" is token * K + slot: the slot-th expert chosen for a token.
#pragma once

#include "dsv2/backend/cpu/context.hpp"

#include <vector>

namespace dsv2 {

// Runs `policy.route` for every token. The policy is a per-token function
// (see layers/router.hpp), so the same policy type runs on every backend.
template <class Policy, class A>
void route(Context<cpu>& ctx, const Policy& policy,
           std::type_identity_t<View<const A, cpu, 2>> logits,         // (N, E)
           const A* bias,                        // (E) or nullptr
           View<A, cpu, 2> scores,               // (N, E)
           View<std::int32_t, cpu, 2> idx,       // (N, K)
           View<A, cpu, 2> weight)               // (N, K)
{
    const std::int64_t n = logits.shape[0], e = logits.shape[1], k = idx.shape[1];
    DSV2_CHECK(scores.shape == logits.shape && weight.shape == idx.shape && idx.shape[0] == n &&
                   logits.contiguous() && scores.contiguous() && idx.contiguous() && weight.contiguous(),
               ShapeError, "route: logits {}, scores {}, idx {}, weight {}", shape_str(logits.shape),
               shape_str(scores.shape), shape_str(idx.shape), shape_str(weight.shape));
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * e > 8192)
    for (std::int64_t t = 0; t < n; ++t) {
        policy.route(logits.data + t * e, bias, static_cast<int>(e), scores.data + t * e,
                     idx.data + t * k, weight.data + t * k);
    }
}

// Counting sort of entries by expert: order[offsets[x] .. offsets[x+1]) are
// the entries routed to expert x, in token order. Offsets come back on the
// host because the caller loops over experts there.
inline void group_by_expert(Context<cpu>&,
                            View<const std::int32_t, cpu, 2> idx,  // (N, K)
                            std::int64_t n_experts,
                            View<std::int32_t, cpu, 1> order,      // (N*K)
                            std::vector<std::int64_t>& offsets)    // (E+1), host
{
    const std::int64_t entries = idx.numel();
    DSV2_CHECK(order.shape[0] == entries && idx.contiguous(), ShapeError,
               "group_by_expert: idx {}, order ({})", shape_str(idx.shape), order.shape[0]);
    offsets.assign(static_cast<std::size_t>(n_experts + 1), 0);
    for (std::int64_t i = 0; i < entries; ++i) {
        const std::int32_t x = idx.data[i];
        DSV2_CHECK(x >= 0 && x < n_experts, RangeError, "group_by_expert: expert id {} outside [0, {})", x,
                   n_experts);
        ++offsets[static_cast<std::size_t>(x) + 1];
    }
    for (std::int64_t x = 0; x < n_experts; ++x) offsets[x + 1] += offsets[x];
    std::vector<std::int64_t> next(offsets.begin(), offsets.end() - 1);
    for (std::int64_t i = 0; i < entries; ++i) order(next[idx.data[i]]++) = static_cast<std::int32_t>(i);
}

// out[i] = x[entries[i] / K].
template <class A>
void gather_rows(Context<cpu>& ctx,
                 std::type_identity_t<View<const A, cpu, 2>> x,                   // (N, D)
                 View<const std::int32_t, cpu, 1> entries,  // (M)
                 std::int64_t k,
                 View<A, cpu, 2> out)                       // (M, D)
{
    const std::int64_t m = entries.shape[0], d = x.shape[1];
    DSV2_CHECK(out.shape[0] == m && out.shape[1] == d, ShapeError, "gather_rows: x {}, {} entries, out {}",
               shape_str(x.shape), m, shape_str(out.shape));
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (m * d > 65536)
    for (std::int64_t i = 0; i < m; ++i) {
        const A* src = x.data + (entries(i) / k) * x.stride[0];
        A* dst = out.data + i * out.stride[0];
        for (std::int64_t j = 0; j < d; ++j) dst[j] = src[j];
    }
}

// y[entries[i] / K] += weight[entries[i]] * src[i]. Within one expert's batch
// a token appears at most once, so rows never collide.
template <class A>
void scatter_add_rows(Context<cpu>& ctx,
                      std::type_identity_t<View<const A, cpu, 2>> src,                 // (M, D)
                      View<const std::int32_t, cpu, 1> entries,  // (M)
                      std::type_identity_t<View<const A, cpu, 2>> weight,              // (N, K)
                      View<A, cpu, 2> y)                         // (N, D)
{
    const std::int64_t m = entries.shape[0], d = y.shape[1], k = weight.shape[1];
    DSV2_CHECK(src.shape[0] == m && src.shape[1] == d && weight.contiguous(), ShapeError,
               "scatter_add_rows: src {}, {} entries, y {}", shape_str(src.shape), m, shape_str(y.shape));
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (m * d > 65536)
    for (std::int64_t i = 0; i < m; ++i) {
        const std::int32_t e = entries(i);
        const A w = weight.data[e];
        A* dst = y.data + (e / k) * y.stride[0];
        const A* s = src.data + i * src.stride[0];
        for (std::int64_t j = 0; j < d; ++j) dst[j] += w * s[j];
    }
}

}  // namespace dsv2
