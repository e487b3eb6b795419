// MoE variants (issue 7): capacity with token dropping against the f64
// reference in both stated orders, with the exact entries dropped; the
// auxiliary-loss-free bias update against the reference; fine-grained
// expert segmentation keeping total and activated parameters; policies as
// types on the MoE layer.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

using namespace dsv2;
using namespace dsv2::test;

namespace {

const char* kMoePrefix = "model.layers.0.mlp.";

template <class T>
MoE<T, cpu> load_capacity_moe(CpuCtx& ctx, const Case& c) {
    MoE<T, cpu> moe(c.config);
    load_component(ctx, moe, c, kMoePrefix);
    return moe;
}

template <class T, class Policy>
Tensor<acc_t<T>, cpu, 2> run(CpuCtx& ctx, const MoE<T, cpu, Policy>& moe, const Case& c, RoutingRecord* record = nullptr) {
    using A = acc_t<T>;
    const auto shape = c.shape("x");
    const auto x = make_tensor<A, 2>(c.f64("x"), {shape[0], shape[1]});
    Tensor<A, cpu, 2> y({shape[0], shape[1]});
    Workspace<cpu> ws;
    moe.forward(ctx, ws, x.cview(), y.view(), record);
    return y;
}

DropOrder order_of(const std::string& s) { return s == "lowest_score" ? DropOrder::lowest_score : DropOrder::token_order; }

}  // namespace

TEST_CASE("Capacity keep masks equal the reference in both drop orders", "[moe][capacity][golden]") {
    const Case c("variants/moe_capacity");
    const auto scores = c.f64("scores");
    const auto idx64 = c.i64("topk_idx");
    const std::vector<std::int32_t> idx(idx64.begin(), idx64.end());
    const std::int64_t n = c.meta.at("n_tokens").get<std::int64_t>(), k = 2, e = c.config.n_routed_experts;
    const double factor = c.meta.at("capacity_factor").get<double>();
    CHECK(expert_capacity(factor, n, k, e) == c.meta.at("capacity").get<std::int64_t>());
    for (const std::string order : {"lowest_score", "token_order"}) {
        INFO(order);
        const auto keep = capacity_keep_mask(idx.data(), scores.data(), n, k, e, {factor, order_of(order)});
        const auto expected = c.i64(order + ".keep");
        CHECK(std::vector<std::int64_t>(keep.begin(), keep.end()) == expected);
    }
}

TEMPLATE_TEST_CASE("MoE with a capacity factor matches the reference output in both drop orders; without one it is unchanged",
                   "[moe][capacity][golden]", double, float) {
    CpuCtx ctx;
    const Case c("variants/moe_capacity");
    auto moe = load_capacity_moe<TestType>(ctx, c);
    REQUIRE(!moe.capacity);
    compare_view<TestType>("moe no capacity", run(ctx, moe, c).cview(), c, "no_capacity.y");
    for (const std::string order : {"lowest_score", "token_order"}) {
        moe.capacity = CapacityLimit{c.meta.at("capacity_factor").get<double>(), order_of(order)};
        compare_view<TestType>("moe capacity " + order, run(ctx, moe, c).cview(), c, order + ".y");
    }
    // A factor large enough to hold every entry drops nothing.
    moe.capacity = CapacityLimit{4.0, DropOrder::lowest_score};
    compare_view<TestType>("moe capacity 4.0", run(ctx, moe, c).cview(), c, "no_capacity.y");
}

TEST_CASE("Token dropping drops exactly the entries past capacity, in the stated order", "[moe][capacity]") {
    // 6 tokens, K = 1, E = 3: capacity = ceil(1.0 * 6 / 3) = 2. Tokens 0..4
    // choose expert 0, token 5 expert 1.
    const std::vector<std::int32_t> idx = {0, 0, 0, 0, 0, 1};
    std::vector<double> scores(6 * 3, 0.0);
    const double s0[] = {0.5, 0.9, 0.7, 0.9, 0.6, 0.0};  // token 1 and 3 tie on expert 0
    for (int t = 0; t < 6; ++t) scores[static_cast<std::size_t>(t * 3)] = s0[t];
    scores[5 * 3 + 1] = 0.8;
    CHECK(expert_capacity(1.0, 6, 1, 3) == 2);
    // lowest_score: expert 0 keeps its two highest scores, the tie going to the earlier token.
    CHECK(capacity_keep_mask(idx.data(), scores.data(), 6, 1, 3, {1.0, DropOrder::lowest_score}) ==
          std::vector<std::uint8_t>{0, 1, 0, 1, 0, 1});
    // token_order: expert 0 keeps tokens 0 and 1.
    CHECK(capacity_keep_mask(idx.data(), scores.data(), 6, 1, 3, {1.0, DropOrder::token_order}) ==
          std::vector<std::uint8_t>{1, 1, 0, 0, 0, 1});
    // Factor 0.5: capacity 1.
    CHECK(capacity_keep_mask(idx.data(), scores.data(), 6, 1, 3, {0.5, DropOrder::lowest_score}) ==
          std::vector<std::uint8_t>{0, 1, 0, 0, 0, 1});
    // Exact products do not round up: 1.25 * 16 * 2 / 8 = 5.
    CHECK(expert_capacity(1.25, 16, 2, 8) == 5);
    CHECK(expert_capacity(1.26, 16, 2, 8) == 6);
    CHECK_THROWS_WITH(expert_capacity(0.0, 6, 1, 3), Catch::Contains("[capacity] factor 0"));

    // Each expert keeps min(load, capacity) entries, on random routing.
    std::mt19937 rng(3);
    for (int trial = 0; trial < 20; ++trial) {
        const std::int64_t n = 37, k = 3, e = 7;
        std::vector<std::int32_t> ix(static_cast<std::size_t>(n * k));
        std::vector<double> sc(static_cast<std::size_t>(n * e));
        for (auto& v : sc) v = std::uniform_real_distribution<double>(0, 1)(rng);
        for (std::int64_t t = 0; t < n; ++t) {
            std::vector<std::int32_t> all(static_cast<std::size_t>(e));
            std::iota(all.begin(), all.end(), 0);
            std::shuffle(all.begin(), all.end(), rng);
            std::copy_n(all.begin(), k, ix.begin() + t * k);
        }
        const double factor = 0.5 + 0.1 * trial;
        const std::int64_t cap = expert_capacity(factor, n, k, e);
        for (auto order : {DropOrder::lowest_score, DropOrder::token_order}) {
            const auto keep = capacity_keep_mask(ix.data(), sc.data(), n, k, e, {factor, order});
            std::map<std::int32_t, std::int64_t> load, kept;
            for (std::size_t i = 0; i < ix.size(); ++i) {
                ++load[ix[i]];
                kept[ix[i]] += keep[i];
            }
            for (const auto& [x, l] : load) CHECK(kept[x] == std::min(l, cap));
        }
    }
}

TEST_CASE("The auxiliary-loss-free bias update matches the reference", "[moe][bias][golden]") {
    CpuCtx ctx;
    const Case c("variants/bias_update");
    const double gamma = c.meta.at("gamma").get<double>();
    const auto idx64 = c.i64("topk_idx");
    const auto shape = c.shape("topk_idx");
    RoutingRecord r;
    r.n_tokens = shape[0];
    r.top_k = shape[1];
    r.n_experts = std::ssize(c.f64("bias_in"));
    r.idx.assign(idx64.begin(), idx64.end());
    CHECK(expert_counts(r) == c.i64("load"));

    auto bias = c.f64("bias_in");
    update_balance_bias(bias, expert_counts(r), gamma);
    compare("bias_update/bias_out", "f64", bias, c.f64("bias_out"), {r.n_experts}, tolerance<double>());

    // On a router's e_score_correction_bias.
    const Case v3("router_v3");
    Config cfg;
    cfg.hidden_size = 4;
    cfg.n_routed_experts = r.n_experts;
    cfg.num_experts_per_tok = r.top_k;
    cfg.n_group = v3.meta.at("n_group").get<std::int64_t>();
    cfg.topk_group = v3.meta.at("topk_group").get<std::int64_t>();
    Router<float, cpu, SigmoidWithBias> router(cfg, SigmoidWithBias{4, 4, 2, true, 2.5});
    const auto b_in = c.f64("bias_in");
    for (std::int64_t i = 0; i < r.n_experts; ++i) router.e_score_correction_bias.data()[i] = static_cast<float>(b_in[static_cast<std::size_t>(i)]);
    update_balance_bias(ctx, router, r, gamma);
    std::vector<double> got(router.e_score_correction_bias.data(), router.e_score_correction_bias.data() + r.n_experts);
    compare("bias_update/router bias", "f32", got, c.f64("bias_out"), {r.n_experts}, tolerance<float>());

    Router<float, cpu, Greedy> no_bias(cfg, Greedy{4, true, 1.0});
    CHECK_THROWS_WITH(update_balance_bias(ctx, no_bias, r, gamma), Catch::Contains("uses no bias"));
}

TEST_CASE("Fine-grained segmentation keeps total and activated parameters and multiplies top-k",
          "[moe][granularity]") {
    CpuCtx ctx;
    Config base = Config::tiny();
    base.n_shared_experts = 1;
    for (std::int64_t m : {1, 2, 4}) {
        INFO("granularity " << m);
        const Config fine = fine_grained(base, m);
        CHECK(fine.n_routed_experts == base.n_routed_experts * m);
        CHECK(fine.moe_intermediate_size * m == base.moe_intermediate_size);
        CHECK(fine.num_experts_per_tok == base.num_experts_per_tok * m);
        CHECK(fine.shared_intermediate_size() == base.shared_intermediate_size());
        const auto p0 = moe_layer_params(base), p1 = moe_layer_params(fine);
        // Only the router grows (one row per expert).
        CHECK(p1.total - p1.activated == p0.total - p0.activated);
        CHECK(p1.activated - fine.n_routed_experts * fine.hidden_size ==
              p0.activated - base.n_routed_experts * base.hidden_size);
        // The layer built from the config has exactly that many parameters.
        MoE<float, cpu> moe(fine);
        CHECK(count_weights(moe) == p1.total);
        CHECK(moe.top_k() == fine.num_experts_per_tok);
        fine.validate();
    }
    CHECK_THROWS_WITH(fine_grained(base, 3), Catch::Contains("not divisible"));
    CHECK_THROWS_WITH(fine_grained(base, 0), Catch::Contains("expected >= 1"));
}

TEMPLATE_TEST_CASE("Routing policies as types on the MoE layer equal the config-chosen policy", "[moe][policy]", double,
                   float) {
    CpuCtx ctx;
    const Case c("variants/moe_capacity");
    const auto any = load_capacity_moe<TestType>(ctx, c);
    MoE<TestType, cpu, Greedy> typed(c.config, std::get<Greedy>(policy_from_config(c.config)));
    load_component(ctx, typed, c, kMoePrefix);
    const auto a = run(ctx, any, c), b = run(ctx, typed, c);
    CHECK(to_f64(a.cview()) == to_f64(b.cview()));
    compare_view<TestType>("moe typed greedy", b.cview(), c, "no_capacity.y");
}
