// MoE research knobs that need no edit of the MoE layer:
//  - fine-grained expert segmentation (DeepSeekMoE): a Config transform
//    splitting every expert into m experts of 1/m the width, with m× top-k,
//    so total and activated parameters stay equal;
//  - the auxiliary-loss-free balancing bias update (DeepSeek-V3 §2.1.2) for
//    the SigmoidWithBias policy's e_score_correction_bias;
//  - parameter counts of one MoE layer (total and activated per token).
// Capacity and token dropping live in layers/capacity.hpp (MoE::capacity);
// routing policies are types (layers/router.hpp).
#pragma once

#include "dsv2/layers/moe.hpp"

#include <vector>

namespace dsv2 {

// DeepSeekMoE's fine-grained segmentation: each routed expert of width F
// becomes m experts of width F/m and each token picks m·K of them. Shared
// experts are split the same way (m·S experts of width F/m); since they
// form one merged SwiGLU MLP of width F·S, that changes no number. Groups
// (n_group, topk_group) keep their count and get m× the experts each.
inline Config fine_grained(Config cfg, std::int64_t m) {
    DSV2_CHECK(m >= 1, ConfigError, "[moe variants] granularity {}: expected >= 1", m);
    DSV2_CHECK(cfg.n_routed_experts > 0, ConfigError, "[moe variants] granularity: the config has no routed experts");
    DSV2_CHECK(cfg.moe_intermediate_size % m == 0, ConfigError,
               "[moe variants] granularity {}: moe_intermediate_size {} is not divisible by it", m,
               cfg.moe_intermediate_size);
    DSV2_CHECK(cfg.n_routed_experts * m <= routing::kMaxExperts, Unsupported,
               "[moe variants] granularity {}: {} experts exceed the {} a router supports", m, cfg.n_routed_experts * m,
               routing::kMaxExperts);
    cfg.n_routed_experts *= m;
    cfg.moe_intermediate_size /= m;
    cfg.num_experts_per_tok *= m;
    cfg.n_shared_experts *= m;
    return cfg;
}

struct MoeLayerParams {
    std::int64_t total = 0;      // router + shared + every routed expert
    std::int64_t activated = 0;  // router + shared + the K routed experts of one token
};

inline MoeLayerParams moe_layer_params(const Config& c) {
    const std::int64_t d = c.hidden_size;
    const std::int64_t expert = 3 * d * c.moe_intermediate_size;
    const std::int64_t gate = c.n_routed_experts * d + (c.topk_method == TopkMethod::noaux_tc ? c.n_routed_experts : 0);
    const std::int64_t shared = 3 * d * c.shared_intermediate_size();
    return {gate + shared + c.n_routed_experts * expert, gate + shared + c.num_experts_per_tok * expert};
}

// Tokens routed to each expert in a recorded forward.
inline std::vector<std::int64_t> expert_counts(const RoutingRecord& r) {
    std::vector<std::int64_t> counts(static_cast<std::size_t>(r.n_experts), 0);
    for (const std::int32_t x : r.idx) {
        DSV2_CHECK(x >= 0 && x < r.n_experts, RangeError, "[moe variants] expert id {} outside [0, {})", x, r.n_experts);
        ++counts[static_cast<std::size_t>(x)];
    }
    return counts;
}

// Auxiliary-loss-free balancing: after a step with per-expert loads c_i,
//     b_i += γ · sign(mean(c) − c_i)
// (overloaded experts lose γ, underloaded gain γ, exactly-average ones stay).
inline void update_balance_bias(std::vector<double>& bias, const std::vector<std::int64_t>& counts, double gamma) {
    DSV2_CHECK(bias.size() == counts.size() && !counts.empty(), ShapeError,
               "[moe variants] bias update: {} biases for {} expert counts", bias.size(), counts.size());
    double mean = 0;
    for (auto c : counts) mean += static_cast<double>(c);
    mean /= static_cast<double>(counts.size());
    for (std::size_t i = 0; i < bias.size(); ++i) {
        const double diff = mean - static_cast<double>(counts[i]);
        bias[i] += gamma * static_cast<double>((diff > 0) - (diff < 0));
    }
}

// The same rule applied to a router's e_score_correction_bias, from the
// routing record of the step (MoE::forward with a RoutingRecord).
template <class T, class B, class Policy>
void update_balance_bias(Context<B>& ctx, Router<T, B, Policy>& router, const RoutingRecord& record, double gamma) {
    using A = acc_t<T>;
    DSV2_CHECK(router.uses_bias(), Unsupported, "[moe variants] bias update: this router's policy uses no bias");
    DSV2_CHECK(record.n_experts == router.n_experts(), ShapeError,
               "[moe variants] bias update: record has {} experts, router {}", record.n_experts, router.n_experts());
    const std::int64_t e = router.n_experts();
    std::vector<A> b(static_cast<std::size_t>(e));
    copy_to_host(ctx, router.e_score_correction_bias.data(), b.data(), e);
    std::vector<double> bd(b.begin(), b.end());
    update_balance_bias(bd, expert_counts(record), gamma);
    for (std::int64_t i = 0; i < e; ++i) b[static_cast<std::size_t>(i)] = static_cast<A>(bd[static_cast<std::size_t>(i)]);
    copy_to_device(ctx, b.data(), router.e_score_correction_bias.data(), e);
}

}  // namespace dsv2
