// Expert capacity with token dropping, as used when training MoE models
// (GShard, Switch; DeepSeek-V2 §2.2.4 drops at device level). Off by
// default: inference never drops.
//
// Each expert accepts at most capacity = ceil(factor · N·K / E) entries of a
// batch of N tokens with K experts each over E experts. An entry is a
// (token, slot) pair, flat index token·K + slot. Past capacity, entries are
// dropped in a stated order:
//  - DropOrder::lowest_score (default; DeepSeek-V2's "drop the tokens with
//    the lowest affinity scores"): an expert keeps its entries with the
//    highest router score s(token, expert) — the softmax probability or
//    sigmoid score, not the normalised weight — ties going to the lower
//    entry index (earlier token);
//  - DropOrder::token_order (GShard/Switch): an expert keeps its first
//    entries in flat order (token, then slot).
// A dropped entry contributes zero: its weight is set to 0, so the token
// keeps its other experts and the shared experts (and the residual).
// A RoutingRecord of such a forward holds the chosen experts before
// dropping and the weights after (dropped entries at 0).
#pragma once

#include "dsv2/layers/common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace dsv2 {

enum class DropOrder { lowest_score, token_order };

struct CapacityLimit {
    double factor = 1.0;
    DropOrder order = DropOrder::lowest_score;
};

inline std::int64_t expert_capacity(double factor, std::int64_t n_tokens, std::int64_t k, std::int64_t n_experts) {
    DSV2_CHECK(factor > 0 && n_experts > 0 && k > 0 && n_tokens >= 0, RangeError,
               "[capacity] factor {}, {} tokens, K {}, {} experts: invalid", factor, n_tokens, k, n_experts);
    // A tiny epsilon keeps exact products (1.25 · 16 · 2 / 8 = 5) from rounding up.
    return static_cast<std::int64_t>(
        std::ceil(factor * static_cast<double>(n_tokens * k) / static_cast<double>(n_experts) - 1e-9));
}

// keep[token·K + slot] = 1 if the entry is within its expert's capacity.
// idx: (N, K) chosen experts; scores: (N, E) router scores, row-major.
template <class S>
std::vector<std::uint8_t> capacity_keep_mask(const std::int32_t* idx, const S* scores, std::int64_t n_tokens,
                                             std::int64_t k, std::int64_t n_experts, const CapacityLimit& limit) {
    const std::int64_t cap = expert_capacity(limit.factor, n_tokens, k, n_experts);
    const std::int64_t entries = n_tokens * k;
    std::vector<std::int64_t> order(static_cast<std::size_t>(entries));
    std::iota(order.begin(), order.end(), std::int64_t{0});
    if (limit.order == DropOrder::lowest_score) {
        auto affinity = [&](std::int64_t e) { return static_cast<double>(scores[(e / k) * n_experts + idx[e]]); };
        std::stable_sort(order.begin(), order.end(),
                         [&](std::int64_t a, std::int64_t b) { return affinity(a) > affinity(b); });
    }
    std::vector<std::int64_t> taken(static_cast<std::size_t>(n_experts), 0);
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(entries), 0);
    for (const std::int64_t e : order) {
        const std::int32_t x = idx[e];
        DSV2_CHECK(x >= 0 && x < n_experts, RangeError, "[capacity] expert id {} outside [0, {})", x, n_experts);
        if (taken[static_cast<std::size_t>(x)] < cap) {
            ++taken[static_cast<std::size_t>(x)];
            keep[static_cast<std::size_t>(e)] = 1;
        }
    }
    return keep;
}

// Zeroes the weights of the entries past capacity, on any backend (through
// host copies: a training-time path, it allocates). Returns how many dropped.
template <class A, class B>
std::int64_t drop_over_capacity(Context<B>& ctx, const CapacityLimit& limit,
                                View<const A, B, 2> scores,            // (N, E)
                                View<const std::int32_t, B, 2> idx,    // (N, K)
                                View<A, B, 2> weights)                 // (N, K)
{
    const std::int64_t n = idx.shape[0], k = idx.shape[1], e = scores.shape[1];
    DSV2_CHECK(scores.contiguous() && idx.contiguous() && weights.contiguous() && weights.shape == idx.shape &&
                   scores.shape[0] == n,
               ShapeError, "[capacity] scores {}, idx {}, weights {}", shape_str(scores.shape), shape_str(idx.shape),
               shape_str(weights.shape));
    std::vector<A> s(static_cast<std::size_t>(n * e)), w(static_cast<std::size_t>(n * k));
    std::vector<std::int32_t> ix(static_cast<std::size_t>(n * k));
    copy_to_host(ctx, scores.data, s.data(), n * e);
    copy_to_host(ctx, idx.data, ix.data(), n * k);
    copy_to_host(ctx, weights.data, w.data(), n * k);
    const auto keep = capacity_keep_mask(ix.data(), s.data(), n, k, e, limit);
    std::int64_t dropped = 0;
    for (std::size_t i = 0; i < keep.size(); ++i) {
        if (!keep[i]) {
            w[i] = A(0);
            ++dropped;
        }
    }
    copy_to_device(ctx, w.data(), weights.data, n * k);
    return dropped;
}

}  // namespace dsv2
