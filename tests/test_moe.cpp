// DeepSeekMoE against the reference on every tiny case (MoE layers and the
// dense layers' MLP), the shared experts alone, the decomposition
// MoE == Σ chosen experts + shared, balance statistics, and batch
// independence at awkward token counts.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "step_fixture.hpp"

#include <random>

using namespace dsv2;
using namespace dsv2::test;

namespace {

const std::vector<std::string> kCases = {"tiny_v2", "tiny_lite", "tiny_plain"};

std::string layer_prefix(std::int64_t layer) { return "layers." + std::to_string(layer) + "."; }

std::vector<std::int64_t> moe_layers(const Case& c) {
    std::vector<std::int64_t> out;
    for (const auto& l : c.meta.at("moe_layers")) out.push_back(l.get<std::int64_t>());
    return out;
}

template <class T>
MoE<T, cpu> load_moe(CpuCtx& ctx, const Case& c, std::int64_t layer) {
    REQUIRE(c.config.is_moe_layer(layer));
    MoE<T, cpu> moe(c.config);
    load_component(ctx, moe, c, "model." + layer_prefix(layer) + "mlp.");
    return moe;
}

template <class A>
Tensor<A, cpu, 2> run_moe(CpuCtx& ctx, const auto& moe, const Tensor<A, cpu, 2>& x, RoutingRecord* record = nullptr) {
    Tensor<A, cpu, 2> y({x.size(0), x.size(1)});
    Workspace<cpu> ws;
    moe.forward(ctx, ws, x.cview(), y.view(), record);
    return y;
}

}  // namespace

TEMPLATE_TEST_CASE("MoE layers of every tiny case match the reference output", "[moe][golden]", double, float, bf16,
                   f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        for (const auto layer : moe_layers(c)) {
            const std::string L = layer_prefix(layer);
            const auto moe = load_moe<TestType>(ctx, c, layer);
            const auto shape = c.shape(L + "mlp_in");
            const auto x = make_tensor<A, 2>(c.f64(L + "mlp_in"), {shape[0], shape[1]});
            const auto y = run_moe(ctx, moe, x);
            compare_view<TestType>(L + "mlp_out", y.cview(), c, L + "mlp_out");
        }
    }
}

TEMPLATE_TEST_CASE("Shared experts alone match the reference shared output", "[moe][golden]", double, float, bf16,
                   f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        for (const auto layer : moe_layers(c)) {
            const std::string L = layer_prefix(layer);
            const auto moe = load_moe<TestType>(ctx, c, layer);
            REQUIRE(moe.has_shared);
            CHECK(moe.shared_experts.width() == c.config.moe_intermediate_size * c.config.n_shared_experts);
            const auto shape = c.shape(L + "mlp_in");
            const auto x = make_tensor<A, 2>(c.f64(L + "mlp_in"), {shape[0], shape[1]});
            Tensor<A, cpu, 2> y({shape[0], shape[1]});
            Workspace<cpu> ws;
            moe.shared_experts.forward(ctx, ws, x.cview(), y.view());
            compare_view<TestType>(L + "shared_out", y.cview(), c, L + "shared_out");
        }
    }
}

TEMPLATE_TEST_CASE("Dense layers' MLP matches the reference output", "[moe][mlp][golden]", double, float, bf16, f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    std::int64_t dense = 0;
    for (const auto& name : kCases) {
        const Case c(name);
        for (std::int64_t layer = 0; layer < c.config.num_hidden_layers; ++layer) {
            if (c.config.is_moe_layer(layer)) continue;
            ++dense;
            const std::string L = layer_prefix(layer);
            MLP<TestType, cpu> mlp(c.config.hidden_size, c.config.intermediate_size);
            load_component(ctx, mlp, c, "model." + L + "mlp.");
            const auto shape = c.shape(L + "mlp_in");
            const auto x = make_tensor<A, 2>(c.f64(L + "mlp_in"), {shape[0], shape[1]});
            Tensor<A, cpu, 2> y({shape[0], shape[1]});
            Workspace<cpu> ws;
            mlp.forward(ctx, ws, x.cview(), y.view());
            compare_view<TestType>(L + "mlp_out (dense)", y.cview(), c, L + "mlp_out");
        }
    }
    CHECK(dense == 3);  // tiny_v2 layer 0, tiny_lite layer 0, tiny_plain layer 1
}

// The decomposition computed here token by token, each chosen expert run
// on its own row: catches dispatch/combine bugs (wrong rows, weights or
// accumulation) independently of the reference.
TEMPLATE_TEST_CASE("MoE equals the weighted sum of its chosen experts plus the shared experts", "[moe][paths]", double,
                   float, bf16, f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        for (const auto layer : moe_layers(c)) {
            const std::string L = layer_prefix(layer);
            const auto moe = load_moe<TestType>(ctx, c, layer);
            const auto shape = c.shape(L + "mlp_in");
            const std::int64_t n = shape[0], d = shape[1], e = moe.n_experts(), k = moe.top_k();
            const auto x = make_tensor<A, 2>(c.f64(L + "mlp_in"), {n, d});
            const auto y = run_moe(ctx, moe, x);

            Workspace<cpu> ws;
            Tensor<A, cpu, 2> scores({n, e}), w({n, k});
            Tensor<std::int32_t, cpu, 2> idx({n, k});
            moe.gate.forward(ctx, ws, x.cview(), scores.view(), idx.view(), w.view());
            Tensor<A, cpu, 2> expect({n, d}), one({1, d});
            moe.shared_experts.forward(ctx, ws, x.cview(), expect.view());
            std::vector<int> used(static_cast<std::size_t>(e), 0);
            for (std::int64_t t = 0; t < n; ++t) {
                for (std::int64_t j = 0; j < k; ++j) {
                    const std::int32_t ex = idx.cview()(t, j);
                    REQUIRE((ex >= 0 && ex < e));
                    used[static_cast<std::size_t>(ex)] = 1;
                    moe.experts[static_cast<std::size_t>(ex)].forward(ctx, ws, x.cview().rows(t, t + 1), one.view());
                    for (std::int64_t i = 0; i < d; ++i) expect.view()(t, i) += w.cview()(t, j) * one.cview()(0, i);
                }
            }
            // Several experts must take part, or the sum proves little.
            CHECK(std::count(used.begin(), used.end(), 1) >= std::min<std::int64_t>(e, 3));
            compare(name + "/" + L + "moe vs sum of experts", DTypeTraits<TestType>::name, to_f64(y.cview()),
                    to_f64(expect.cview()), {n, d}, rounding_tolerance<TestType>());
        }
    }
}

// The statistics are f64 host arithmetic: fed the reference's own routing,
// they must reproduce its counts and losses to f64 rounding.
TEST_CASE("Balance statistics of the reference routing match the reference counts and losses", "[moe][balance]") {
    for (const auto& name : kCases) {
        const Case c(name);
        const auto devices = c.meta.at("balance_devices").get<std::int64_t>();
        const auto max_devices = c.meta.at("balance_max_devices").get<std::int64_t>();
        for (const auto layer : moe_layers(c)) {
            const std::string L = layer_prefix(layer);
            RoutingRecord r;
            const auto shape = c.shape(L + "router.topk_idx");
            r.n_tokens = shape[0];
            r.top_k = shape[1];
            r.n_experts = c.config.n_routed_experts;
            r.scores = c.f64(L + "router.scores");
            for (auto i : c.i64(L + "router.topk_idx")) r.idx.push_back(static_cast<std::int32_t>(i));
            r.weights = c.f64(L + "router.topk_weight");
            const auto s = balance_statistics(r, devices, max_devices);
            CHECK(std::vector<std::int64_t>(s.counts.begin(), s.counts.end()) == c.i64(L + "balance.counts"));
            compare(name + "/" + L + "balance.losses (reference routing)", "f64",
                    std::vector<double>{s.expert_loss, s.device_loss, s.comm_loss}, c.f64(L + "balance.losses"), {3},
                    tolerance<double>());
        }
    }
}

TEMPLATE_TEST_CASE("Balance statistics from the MoE's routing record match the reference", "[moe][balance][golden]",
                   double, float, bf16, f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        const auto devices = c.meta.at("balance_devices").get<std::int64_t>();
        const auto max_devices = c.meta.at("balance_max_devices").get<std::int64_t>();
        for (const auto layer : moe_layers(c)) {
            const std::string L = layer_prefix(layer);
            const auto moe = load_moe<TestType>(ctx, c, layer);
            const auto shape = c.shape(L + "mlp_in");
            const auto x = make_tensor<A, 2>(c.f64(L + "mlp_in"), {shape[0], shape[1]});
            RoutingRecord record;
            run_moe(ctx, moe, x, &record);
            REQUIRE(record.n_tokens == shape[0]);
            REQUIRE(record.n_experts == c.config.n_routed_experts);
            REQUIRE(record.top_k == c.config.num_experts_per_tok);
            compare_view<TestType>(L + "record.scores",
                                   View<const double, cpu, 2>(record.scores.data(), {shape[0], record.n_experts}), c,
                                   L + "router.scores");
            const auto s = balance_statistics(record, devices, max_devices);
            // Counts are discrete: equal as long as the routing is, which the
            // router test establishes in every dtype for these fixtures.
            CHECK(std::vector<std::int64_t>(s.counts.begin(), s.counts.end()) == c.i64(L + "balance.counts"));
            compare(name + "/" + L + "balance.losses", DTypeTraits<TestType>::name,
                    std::vector<double>{s.expert_loss, s.device_loss, s.comm_loss}, c.f64(L + "balance.losses"), {3},
                    tolerance<TestType>());
        }
    }
}

TEST_CASE("Balance statistics reject records that cannot be split over the devices", "[moe][balance][errors]") {
    RoutingRecord r;
    r.n_tokens = 2;
    r.n_experts = 6;
    r.top_k = 1;
    r.scores.assign(12, 1.0 / 6);
    r.idx = {0, 5};
    r.weights = {1, 1};
    REQUIRE_THROWS_WITH(balance_statistics(r, 4, 1), Catch::Contains("cannot be split evenly over 4 devices"));
    REQUIRE_THROWS_WITH(balance_statistics(r, 2, 3), Catch::Contains("max devices per token 3 outside 1..2"));
    RoutingRecord empty;
    REQUIRE_THROWS_WITH(balance_statistics(empty, 1, 1), Catch::Contains("empty routing record"));
    // A valid call on the same record, checked by hand: counts (1,0,0,0,0,1),
    // f_i = E/(K T) * count = 3 * count, P_i = 1/6, so L_exp = Σ f_i P_i = 1.
    const auto s = balance_statistics(r, 2, 1);
    CHECK(s.counts == std::vector<std::int64_t>{1, 0, 0, 0, 0, 1});
    CHECK(s.expert_loss == Approx(1.0).epsilon(1e-14));
    // Devices {0,1,2}, {3,4,5}: f'_d = mean f = 1 each, P'_d = 1/2 each -> 1.
    CHECK(s.device_loss == Approx(1.0).epsilon(1e-14));
    // Each device receives one of the two tokens: f''_d = D/(M T) * 1 = 1 -> 1.
    CHECK(s.comm_loss == Approx(1.0).epsilon(1e-14));
}

TEMPLATE_TEST_CASE("MoE of a batch equals MoE of each token alone at awkward token counts", "[moe][batch]", double,
                   float, bf16, f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    const Case c("tiny_v2");
    const auto moe = load_moe<TestType>(ctx, c, 1);
    const std::int64_t d = c.config.hidden_size;
    std::mt19937_64 rng(11);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (const std::int64_t n : {1, 31, 32, 33}) {
        std::vector<double> xs(static_cast<std::size_t>(n * d));
        for (auto& v : xs) v = normal(rng);
        const auto x = make_tensor<A, 2>(xs, {n, d});
        const auto y = run_moe(ctx, moe, x);
        std::vector<double> alone;
        for (std::int64_t t = 0; t < n; ++t) {
            const auto xt =
                make_tensor<A, 2>(std::vector<double>(xs.begin() + t * d, xs.begin() + (t + 1) * d), {1, d});
            const auto yt = to_f64(run_moe(ctx, moe, xt).cview());
            alone.insert(alone.end(), yt.begin(), yt.end());
        }
        INFO("N = " << n);
        compare("tiny_v2/layers.1. moe batch vs one token at a time", DTypeTraits<TestType>::name, to_f64(y.cview()),
                alone, {n, d}, rounding_tolerance<TestType>());
    }
}
