// The MoE router: gate logits x W^T in f32 or wider, then a routing policy
// picks K experts per token and their weights.
//
// A policy is a small value type with a per-token function
//     route(logits, bias, E, scores, idx, weight)
// that writes the full scores (for balance statistics), the chosen experts
// (best first; ties go to the lower index) and their weights. Because it is
// per-token and allocation-free, the same policy type runs on every backend,
// and a user-defined policy plugs in as `Router<T, B, MyPolicy>` without
// touching the library (examples/custom_router.cpp).
#pragma once

#include "dsv2/layers/common.hpp"

#include <concepts>
#include <variant>

namespace dsv2 {

template <class P, class A = float>
concept RouterPolicy = requires(const P& p, const A* logits, A* scores, std::int32_t* idx, A* weight) {
    { p.experts_per_token() } -> std::convertible_to<int>;
    p.route(logits, logits, 1, scores, idx, weight);
};

namespace routing {

// The widest expert count a policy handles on the stack.
inline constexpr int kMaxExperts = 1024;

template <class A>
DSV2_HD inline void softmax(const A* logits, int n, A* out) {
    A mx = logits[0];
    for (int i = 1; i < n; ++i) mx = logits[i] > mx ? logits[i] : mx;
    A sum = 0;
    for (int i = 0; i < n; ++i) sum += (out[i] = std::exp(logits[i] - mx));
    for (int i = 0; i < n; ++i) out[i] /= sum;
}

// Indices of the k largest values among the allowed ones, best first; ties
// go to the lower index. O(n k): n is at most a few hundred experts, k <= 8.
template <class A>
DSV2_HD inline void top_k(const A* values, const bool* allowed, int n, int k, std::int32_t* out) {
    bool taken[kMaxExperts] = {};
    for (int j = 0; j < k; ++j) {
        int best = -1;
        for (int i = 0; i < n; ++i) {
            if (taken[i] || (allowed && !allowed[i])) continue;
            if (best < 0 || values[i] > values[best]) best = i;
        }
        out[j] = best;
        if (best >= 0) taken[best] = true;
    }
}

// Keeps the experts of the `keep` best groups, scoring each group with `group_score`.
template <class A, class GroupScore>
DSV2_HD inline void allow_best_groups(const A* choice, int n, int n_group, int keep, GroupScore group_score,
                                      bool* allowed) {
    A scores[kMaxExperts];
    std::int32_t best[kMaxExperts];
    const int per_group = n / n_group;
    for (int g = 0; g < n_group; ++g) scores[g] = group_score(choice + g * per_group, per_group);
    top_k(scores, static_cast<const bool*>(nullptr), n_group, keep, best);
    for (int i = 0; i < n; ++i) allowed[i] = false;
    for (int j = 0; j < keep; ++j)
        for (int i = 0; i < per_group; ++i) allowed[best[j] * per_group + i] = true;
}

// DeepSeek-V2's weight rule: normalise to sum 1 only when K > 1 and
// norm_topk_prob; otherwise scale by routed_scaling_factor.
template <class A>
DSV2_HD inline void v2_weights(A* w, int k, bool norm_topk_prob, double routed_scaling_factor) {
    if (k > 1 && norm_topk_prob) {
        A sum = 0;
        for (int j = 0; j < k; ++j) sum += w[j];
        for (int j = 0; j < k; ++j) w[j] /= sum + static_cast<A>(1e-20);
    } else {
        for (int j = 0; j < k; ++j) w[j] *= static_cast<A>(routed_scaling_factor);
    }
}

}  // namespace routing

// softmax scores, the top K experts overall (DeepSeek-V2-Lite).
struct Greedy {
    int top_k = 1;
    bool norm_topk_prob = false;
    double routed_scaling_factor = 1.0;

    int experts_per_token() const { return top_k; }

    template <class A>
    DSV2_HD void route(const A* logits, const A* /*bias*/, int n, A* scores, std::int32_t* idx, A* w) const {
        routing::softmax(logits, n, scores);
        routing::top_k(scores, static_cast<const bool*>(nullptr), n, top_k, idx);
        for (int j = 0; j < top_k; ++j) w[j] = scores[idx[j]];
        routing::v2_weights(w, top_k, norm_topk_prob, routed_scaling_factor);
    }
};

// Device-limited routing (DeepSeek-V2): softmax scores; a group's score is
// its best expert's score; keep the topk_group best groups, then the top K
// experts among them.
struct GroupLimitedGreedy {
    int top_k = 1;
    int n_group = 1;
    int topk_group = 1;
    bool norm_topk_prob = false;
    double routed_scaling_factor = 1.0;

    int experts_per_token() const { return top_k; }

    template <class A>
    DSV2_HD void route(const A* logits, const A* /*bias*/, int n, A* scores, std::int32_t* idx, A* w) const {
        routing::softmax(logits, n, scores);
        bool allowed[routing::kMaxExperts];
        routing::allow_best_groups(
            scores, n, n_group, topk_group,
            [](const A* g, int m) {
                A best = g[0];
                for (int i = 1; i < m; ++i) best = g[i] > best ? g[i] : best;
                return best;
            },
            allowed);
        routing::top_k(scores, allowed, n, top_k, idx);
        for (int j = 0; j < top_k; ++j) w[j] = scores[idx[j]];
        routing::v2_weights(w, top_k, norm_topk_prob, routed_scaling_factor);
    }
};

// DeepSeek-V3's auxiliary-loss-free routing ("noaux_tc"): sigmoid scores; a
// per-expert bias steers selection only; a group's score is the sum of its
// two best biased scores; weights are the unbiased scores of the chosen
// experts, normalised if asked, then always scaled.
struct SigmoidWithBias {
    static constexpr bool uses_bias = true;
    int top_k = 1;
    int n_group = 1;
    int topk_group = 1;
    bool norm_topk_prob = true;
    double routed_scaling_factor = 1.0;

    int experts_per_token() const { return top_k; }

    template <class A>
    DSV2_HD void route(const A* logits, const A* bias, int n, A* scores, std::int32_t* idx, A* w) const {
        A choice[routing::kMaxExperts];
        for (int i = 0; i < n; ++i) {
            scores[i] = A(1) / (A(1) + std::exp(-logits[i]));
            choice[i] = scores[i] + (bias ? bias[i] : A(0));
        }
        bool allowed[routing::kMaxExperts];
        routing::allow_best_groups(
            choice, n, n_group, topk_group,
            [](const A* g, int m) {
                std::int32_t two[2];
                const int k = m < 2 ? m : 2;
                routing::top_k(g, static_cast<const bool*>(nullptr), m, k, two);
                A sum = 0;
                for (int j = 0; j < k; ++j) sum += g[two[j]];
                return sum;
            },
            allowed);
        routing::top_k(choice, allowed, n, top_k, idx);
        A sum = 0;
        for (int j = 0; j < top_k; ++j) sum += (w[j] = scores[idx[j]]);
        for (int j = 0; j < top_k; ++j) {
            if (norm_topk_prob) w[j] /= sum + static_cast<A>(1e-20);
            w[j] *= static_cast<A>(routed_scaling_factor);
        }
    }
};

template <class P>
inline constexpr bool policy_uses_bias = requires { requires P::uses_bias; };

// The built-in policies, chosen at run time from config.json.
using AnyPolicy = std::variant<Greedy, GroupLimitedGreedy, SigmoidWithBias>;

inline AnyPolicy policy_from_config(const Config& cfg) {
    const int k = static_cast<int>(cfg.num_experts_per_tok);
    switch (cfg.topk_method) {
        case TopkMethod::greedy: return Greedy{k, cfg.norm_topk_prob, cfg.routed_scaling_factor};
        case TopkMethod::group_limited_greedy:
            return GroupLimitedGreedy{k, static_cast<int>(cfg.n_group), static_cast<int>(cfg.topk_group),
                                      cfg.norm_topk_prob, cfg.routed_scaling_factor};
        case TopkMethod::noaux_tc:
            return SigmoidWithBias{k, static_cast<int>(cfg.n_group), static_cast<int>(cfg.topk_group),
                                   cfg.norm_topk_prob, cfg.routed_scaling_factor};
    }
    DSV2_FAIL(ConfigError, "[config] unknown topk_method");
}

template <class T, class B, class Policy = AnyPolicy>
struct Router {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;
    static constexpr bool is_any = std::is_same_v<Policy, AnyPolicy>;
    static_assert(is_any || RouterPolicy<Policy, A>,
                  "dsv2: a router policy needs experts_per_token() and route(logits, bias, E, scores, idx, "
                  "weight) (see layers/router.hpp and docs/variants.md)");

    // The gate is held in the arithmetic type A (f32 for 16-bit and int8
    // models, loaded exactly): expert choice is a discrete decision, and a
    // near-tie must not flip on how a product rounds (e.g. bf16 activations
    // in the prefill GEMM). It is E x D, small next to the experts.
    Tensor<A, B, 2> weight;                   // (E, D)   HF: mlp.gate.weight
    Tensor<A, B, 1> e_score_correction_bias;  // (E)      only for policies that use a bias
    Policy policy{};

    Router() = default;
    Router(const Config& cfg, Policy p) : weight({cfg.n_routed_experts, cfg.hidden_size}), policy(std::move(p)) {
        DSV2_CHECK(cfg.n_routed_experts <= routing::kMaxExperts, Unsupported,
                   "[router] {} routed experts: at most {} are supported", cfg.n_routed_experts, routing::kMaxExperts);
        if (uses_bias()) e_score_correction_bias = Tensor<A, B, 1>::zeros({cfg.n_routed_experts});
    }
    explicit Router(const Config& cfg)
        requires is_any
        : Router(cfg, policy_from_config(cfg)) {}

    std::int64_t n_experts() const { return weight.size(0); }
    std::int64_t experts_per_token() const {
        if constexpr (is_any) {
            return std::visit([](const auto& p) { return p.experts_per_token(); }, policy);
        } else {
            return policy.experts_per_token();
        }
    }
    bool uses_bias() const {
        if constexpr (is_any) {
            return std::visit([](const auto& p) { return policy_uses_bias<std::decay_t<decltype(p)>>; }, policy);
        } else {
            return policy_uses_bias<Policy>;
        }
    }

    template <class F>
    void for_each_weight(F&& f) {
        f("weight", weight);
        if (uses_bias()) f("e_score_correction_bias", e_score_correction_bias);
    }

    void forward(Context<B>& ctx, Workspace<B>& ws,
                 View<const A, B, 2> x,            // (N, D)
                 View<A, B, 2> scores,             // (N, E)
                 View<std::int32_t, B, 2> idx,     // (N, K)
                 View<A, B, 2> w) const            // (N, K)
    {
        typename Workspace<B>::Scope scope(ws);
        auto logits = ws.template take<A>(std::array{x.shape[0], n_experts()});  // (N, E)
        linear(ctx, x, weight.cview(), logits);
        const A* bias = uses_bias() ? e_score_correction_bias.data() : nullptr;
        if constexpr (is_any) {
            std::visit([&](const auto& p) { route(ctx, p, cview(logits), bias, scores, idx, w); }, policy);
        } else {
            route(ctx, policy, cview(logits), bias, scores, idx, w);
        }
    }
};

}  // namespace dsv2
