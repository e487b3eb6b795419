// DeepSeekMoE (DeepSeek-V2 §2.2): y = Σ_k w_k · expert_{i_k}(x) + shared(x).
// Fine-grained routed experts are SwiGLU MLPs of width moe_intermediate_size;
// the n_shared_experts shared experts are one SwiGLU MLP of width
// moe_intermediate_size * n_shared_experts, which every token passes through.
// Tokens are batched per expert: entries are grouped by expert, each expert
// runs once over its rows, and results are scatter-added with their weights.
#pragma once

#include "dsv2/layers/capacity.hpp"
#include "dsv2/layers/mlp.hpp"
#include "dsv2/layers/router.hpp"

#include <optional>
#include <string>
#include <vector>

namespace dsv2 {

// What the router decided for one forward, copied to the host on request:
// the input of the balance statistics (layers/balance.hpp).
struct RoutingRecord {
    std::int64_t n_tokens = 0, n_experts = 0, top_k = 0;
    std::vector<double> scores;       // (N, E) full router scores
    std::vector<std::int32_t> idx;    // (N, K) chosen experts
    std::vector<double> weights;      // (N, K) their weights
};

template <class T, class B, class Policy = AnyPolicy>
struct MoE {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;

    Router<T, B, Policy> gate;
    std::vector<MLP<T, B>> experts;
    MLP<T, B> shared_experts;  // empty when n_shared_experts == 0
    bool has_shared = false;
    // Training-time token dropping (layers/capacity.hpp); none at inference.
    std::optional<CapacityLimit> capacity;

    MoE() = default;
    MoE(const Config& cfg, Policy policy) : gate(cfg, std::move(policy)) { build(cfg); }
    explicit MoE(const Config& cfg)
        requires std::is_same_v<Policy, AnyPolicy>
        : gate(cfg) {
        build(cfg);
    }

    std::int64_t n_experts() const { return static_cast<std::int64_t>(experts.size()); }
    std::int64_t top_k() const { return gate.experts_per_token(); }

    template <class F>
    void for_each_weight(F&& f) {
        gate.for_each_weight([&](const std::string& name, auto& t) { f("gate." + name, t); });
        for (std::size_t e = 0; e < experts.size(); ++e) {
            const std::string prefix = "experts." + std::to_string(e) + ".";
            experts[e].for_each_weight([&](const std::string& name, auto& t) { f(prefix + name, t); });
        }
        if (has_shared) {
            shared_experts.for_each_weight([&](const std::string& name, auto& t) { f("shared_experts." + name, t); });
        }
    }

    void forward(Context<B>& ctx, Workspace<B>& ws,
                 View<const A, B, 2> x,  // (N, D)
                 View<A, B, 2> y,        // (N, D)
                 RoutingRecord* record = nullptr) const
    {
        typename Workspace<B>::Scope scope(ws);
        const std::int64_t n = x.shape[0], d = x.shape[1], e_count = n_experts(), k = top_k();
        auto scores = ws.template take<A>(std::array{n, e_count});       // (N, E)
        auto idx = ws.template take<std::int32_t>(std::array{n, k});      // (N, K)
        auto weights = ws.template take<A>(std::array{n, k});             // (N, K)
        gate.forward(ctx, ws, x, scores, idx, weights);
        if (capacity) drop_over_capacity(ctx, *capacity, cview(scores), cview(idx), weights);
        if (record) keep_record(ctx, cview(scores), cview(idx), cview(weights), *record);

        // Every entry's row, grouped by expert, then all experts (and the
        // shared experts) as one group of MLPs.
        auto order = ws.template take<std::int32_t>(std::array{n * k});  // entries grouped by expert
        auto& offsets = ws.host_index();
        group_by_expert(ctx, cview(idx), e_count, order, offsets);
        auto rows = ws.template take<A>(std::array{n * k, d});  // (N*K, D)
        auto out = ws.template take<A>(std::array{n * k, d});   // (N*K, D)
        gather_rows(ctx, x, cview(order), k, rows);
        std::vector<MlpCall<T, B>> calls;
        if (has_shared) {
            calls.push_back({&shared_experts, x, y});
        } else {
            Memory<B>::zero(y.data, static_cast<std::size_t>(y.numel()) * sizeof(A));
        }
        for (std::int64_t e = 0; e < e_count; ++e) {
            const std::int64_t begin = offsets[e], end = offsets[e + 1];
            if (begin < end) calls.push_back({&experts[e], cview(rows.rows(begin, end)), out.rows(begin, end)});
        }
        forward_group(ctx, ws, calls);
        // One scatter per expert: a token appears at most once in an
        // expert's batch, so its rows never collide.
        for (std::int64_t e = 0; e < e_count; ++e) {
            const std::int64_t begin = offsets[e], end = offsets[e + 1];
            if (begin < end)
                scatter_add_rows(ctx, cview(out.rows(begin, end)), cview(order.rows(begin, end)), cview(weights), y);
        }
    }

private:
    void build(const Config& cfg) {
        experts.reserve(static_cast<std::size_t>(cfg.n_routed_experts));
        for (std::int64_t e = 0; e < cfg.n_routed_experts; ++e)
            experts.emplace_back(cfg.hidden_size, cfg.moe_intermediate_size);
        has_shared = cfg.n_shared_experts > 0;
        if (has_shared) shared_experts = MLP<T, B>(cfg.hidden_size, cfg.shared_intermediate_size());
    }

    static void keep_record(Context<B>& ctx, View<const A, B, 2> scores, View<const std::int32_t, B, 2> idx,
                            View<const A, B, 2> weights, RoutingRecord& r) {
        r.n_tokens = scores.shape[0];
        r.n_experts = scores.shape[1];
        r.top_k = idx.shape[1];
        std::vector<A> s(static_cast<std::size_t>(scores.numel())), w(static_cast<std::size_t>(weights.numel()));
        r.idx.resize(static_cast<std::size_t>(idx.numel()));
        copy_to_host(ctx, scores.data, s.data(), scores.numel());
        copy_to_host(ctx, weights.data, w.data(), weights.numel());
        copy_to_host(ctx, idx.data, r.idx.data(), idx.numel());
        r.scores.assign(s.begin(), s.end());
        r.weights.assign(w.begin(), w.end());
    }
};

}  // namespace dsv2
