// Routing: the built-in policies against the reference (router_v2: softmax
// group-limited greedy and greedy; router_v3: sigmoid with bias), the Router
// component on the tiny cases' MoE layers, invariants checked independently
// on many random tokens, and a user-defined policy through the Router seam.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

using namespace dsv2;
using namespace dsv2::test;

namespace {

// The policies' per-token outputs for N tokens, in A.
template <class A>
struct Routed {
    std::vector<A> scores;          // (N, E)
    std::vector<std::int32_t> idx;  // (N, K)
    std::vector<A> weight;          // (N, K)
};

template <class A, class Policy>
Routed<A> route_each(const Policy& policy, const std::vector<double>& logits, const std::vector<double>& bias,
                     std::int64_t n, int e) {
    const int k = policy.experts_per_token();
    std::vector<A> lg(logits.begin(), logits.end()), b(bias.begin(), bias.end());
    Routed<A> r{std::vector<A>(static_cast<std::size_t>(n * e)),
                std::vector<std::int32_t>(static_cast<std::size_t>(n * k)),
                std::vector<A>(static_cast<std::size_t>(n * k))};
    for (std::int64_t t = 0; t < n; ++t)
        policy.route(lg.data() + t * e, b.empty() ? nullptr : b.data(), e, r.scores.data() + t * e,
                     r.idx.data() + t * k, r.weight.data() + t * k);
    return r;
}

template <class V>
std::vector<double> as_f64(const std::vector<V>& v) {
    std::vector<double> out;
    for (const auto& x : v) out.push_back(convert<double>(x));
    return out;
}

std::vector<std::int64_t> as_i64(const std::vector<std::int32_t>& v) { return {v.begin(), v.end()}; }

// Indices of the k largest of `v` among `allowed` (all if empty), best
// first; written independently of routing::top_k.
std::vector<std::int32_t> top_indices(const std::vector<double>& v, int k, const std::vector<bool>& allowed = {}) {
    std::vector<std::int32_t> order;
    for (std::size_t i = 0; i < v.size(); ++i)
        if (allowed.empty() || allowed[i]) order.push_back(static_cast<std::int32_t>(i));
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return v[a] > v[b]; });
    order.resize(static_cast<std::size_t>(k));
    return order;
}

// Experts of the `keep` groups with the best group score.
template <class GroupScore>
std::vector<bool> best_groups(const std::vector<double>& v, int n_group, int keep, GroupScore score) {
    const int per = static_cast<int>(v.size()) / n_group;
    std::vector<double> g;
    for (int i = 0; i < n_group; ++i)
        g.push_back(score(std::vector<double>(v.begin() + i * per, v.begin() + (i + 1) * per)));
    std::vector<bool> allowed(v.size(), false);
    for (auto grp : top_indices(g, keep))
        for (int i = 0; i < per; ++i) allowed[static_cast<std::size_t>(grp * per + i)] = true;
    return allowed;
}

double group_max(const std::vector<double>& g) { return *std::max_element(g.begin(), g.end()); }
double group_top2_sum(const std::vector<double>& g) {
    auto s = g;
    std::sort(s.rbegin(), s.rend());
    return s[0] + (s.size() > 1 ? s[1] : 0.0);
}

std::vector<double> row(const std::vector<double>& all, std::int64_t width, std::int64_t r) {
    return {all.begin() + r * width, all.begin() + (r + 1) * width};
}

std::vector<double> softmax(const std::vector<double>& x) {
    const double mx = *std::max_element(x.begin(), x.end());
    std::vector<double> out;
    double sum = 0;
    for (double v : x) sum += std::exp(v - mx);
    for (double v : x) out.push_back(std::exp(v - mx) / sum);
    return out;
}
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// A Config holding only what a Router reads, for a router-only fixture.
Config router_config(const nlohmann::json& meta, const nlohmann::json& variant, std::int64_t hidden) {
    Config cfg;
    cfg.hidden_size = hidden;
    cfg.n_routed_experts = meta.at("n_routed_experts").get<std::int64_t>();
    cfg.num_experts_per_tok = meta.at("top_k").get<std::int64_t>();
    cfg.routed_scaling_factor = meta.at("routed_scaling_factor").get<double>();
    cfg.norm_topk_prob = variant.at("norm_topk_prob").get<bool>();
    cfg.n_group = variant.value("n_group", std::int64_t{1});
    cfg.topk_group = variant.value("topk_group", std::int64_t{1});
    const auto method = variant.at("topk_method").get<std::string>();
    cfg.topk_method = method == "greedy"                 ? TopkMethod::greedy
                      : method == "group_limited_greedy" ? TopkMethod::group_limited_greedy
                                                         : TopkMethod::noaux_tc;
    cfg.scoring_func = cfg.topk_method == TopkMethod::noaux_tc ? ScoringFunc::sigmoid : ScoringFunc::softmax;
    return cfg;
}

// The policy built from the same Config, so these tests also cover policy_from_config.
template <class P>
P policy_for(const Config& cfg) {
    return std::get<P>(policy_from_config(cfg));
}

}  // namespace

// The policies run in the arithmetic type, so f64 and f32 cover every T.
TEMPLATE_TEST_CASE("Routing policies fed the fixture logits give the reference experts, scores and weights",
                   "[router][golden]", double, float) {
    using A = TestType;
    SECTION("router_v2 softmax, group-limited greedy and greedy") {
        const Case c("router_v2");
        const auto shape = c.shape("logits");
        const std::int64_t n = shape[0];
        const int e = static_cast<int>(shape[1]);
        const auto logits = c.f64("logits");
        for (const std::string variant : {"group", "greedy"}) {
            const Config cfg = router_config(c.meta, c.meta.at(variant), e);
            const auto r = variant == "group" ? route_each<A>(policy_for<GroupLimitedGreedy>(cfg), logits, {}, n, e)
                                              : route_each<A>(policy_for<Greedy>(cfg), logits, {}, n, e);
            INFO("variant " << variant);
            CHECK(as_i64(r.idx) == c.i64(variant + ".topk_idx"));
            compare("router_v2/scores", DTypeTraits<A>::name, as_f64(r.scores), c.f64("scores"), shape, tolerance<A>());
            compare("router_v2/" + variant + ".topk_weight", DTypeTraits<A>::name, as_f64(r.weight),
                    c.f64(variant + ".topk_weight"), c.shape(variant + ".topk_weight"), tolerance<A>());
        }
    }
    SECTION("router_v3 sigmoid with bias") {
        const Case c("router_v3");
        const auto shape = c.shape("logits");
        const std::int64_t n = shape[0];
        const int e = static_cast<int>(shape[1]);
        const Config cfg = router_config(c.meta, c.meta, e);
        const auto r = route_each<A>(policy_for<SigmoidWithBias>(cfg), c.f64("logits"), c.f64("bias"), n, e);
        CHECK(as_i64(r.idx) == c.i64("topk_idx"));
        compare("router_v3/scores", DTypeTraits<A>::name, as_f64(r.scores), c.f64("scores"), shape, tolerance<A>());
        compare("router_v3/topk_weight", DTypeTraits<A>::name, as_f64(r.weight), c.f64("topk_weight"),
                c.shape("topk_weight"), tolerance<A>());
    }
}

// An identity gate turns the fixture logits into the Router's input, so the
// whole component (config -> policy, the bias tensor, the CPU route loop) is
// checked against the router-only fixtures in every storage type: 0 and 1
// are exact in all of them.
TEMPLATE_TEST_CASE("Router with an identity gate reproduces router_v2 and router_v3 through the config's policy",
                   "[router][golden]", double, float, bf16, f16) {
    using T = TestType;
    using A = acc_t<T>;
    CpuCtx ctx;
    struct Variant {
        std::string dir, prefix;
    };
    for (const auto& [dir, prefix] :
         {Variant{"router_v2", "group."}, Variant{"router_v2", "greedy."}, Variant{"router_v3", ""}}) {
        const Case c(dir);
        const auto shape = c.shape("logits");
        const std::int64_t n = shape[0], e = shape[1];
        const auto& variant = dir == "router_v3" ? c.meta : c.meta.at(prefix.substr(0, prefix.size() - 1));
        const Config cfg = router_config(c.meta, variant, e);
        Router<T, cpu> router(cfg);
        REQUIRE(router.uses_bias() == (dir == "router_v3"));
        std::vector<double> eye(static_cast<std::size_t>(e * e), 0.0);
        for (std::int64_t i = 0; i < e; ++i) eye[static_cast<std::size_t>(i * e + i)] = 1.0;
        router.weight = make_tensor<A, 2>(eye, {e, e});
        if (router.uses_bias()) router.e_score_correction_bias = make_tensor<A, 1>(c.f64("bias"), {e});

        const auto x = make_tensor<A, 2>(c.f64("logits"), {n, e});
        const std::int64_t k = router.experts_per_token();
        Tensor<A, cpu, 2> scores({n, e}), w({n, k});
        Tensor<std::int32_t, cpu, 2> idx({n, k});
        Workspace<cpu> ws;
        router.forward(ctx, ws, x.cview(), scores.view(), idx.view(), w.view());
        INFO(dir << " " << prefix);
        CHECK(std::vector<std::int64_t>(idx.data(), idx.data() + idx.numel()) == c.i64(prefix + "topk_idx"));
        // The arithmetic is A's, whatever T stores.
        compare(dir + "/identity-gate scores", DTypeTraits<T>::name, to_f64(scores.cview()), c.f64("scores"), shape,
                tolerance<A>());
        compare(dir + "/identity-gate " + prefix + "topk_weight", DTypeTraits<T>::name, to_f64(w.cview()),
                c.f64(prefix + "topk_weight"), c.shape(prefix + "topk_weight"), tolerance<A>());
    }
}

TEMPLATE_TEST_CASE("Router on every tiny case's MoE layers matches the reference scores, experts and weights",
                   "[router][golden]", double, float, bf16, f16) {
    using T = TestType;
    using A = acc_t<T>;
    CpuCtx ctx;
    for (const std::string name : {"tiny_v2", "tiny_lite", "tiny_plain"}) {
        const Case c(name);
        for (const auto& layer_json : c.meta.at("moe_layers")) {
            const auto layer = layer_json.get<std::int64_t>();
            REQUIRE(c.config.is_moe_layer(layer));
            const std::string L = "layers." + std::to_string(layer) + ".";
            Router<T, cpu> router(c.config);
            load_component(ctx, router, c, "model." + L + "mlp.gate.");
            const auto shape = c.shape(L + "mlp_in");
            const std::int64_t n = shape[0], e = c.config.n_routed_experts, k = c.config.num_experts_per_tok;
            const auto x = make_tensor<A, 2>(c.f64(L + "mlp_in"), {n, shape[1]});
            Tensor<A, cpu, 2> scores({n, e}), w({n, k});
            Tensor<std::int32_t, cpu, 2> idx({n, k});
            Workspace<cpu> ws;
            router.forward(ctx, ws, x.cview(), scores.view(), idx.view(), w.view());
            const auto iv = idx.cview();
            const auto wv = w.cview();

            compare_view<T>(L + "router.scores", scores.cview(), c, L + "router.scores");
            // The fixtures' seeds keep every selection margin above
            // router_min_gap, far above the f64/f32 error; 16-bit weights move
            // the scores by more than that gap, so there a different choice is
            // allowed only where the reference itself is a near tie.
            const auto golden_idx = c.i64(L + "router.topk_idx");
            const auto golden_w = c.f64(L + "router.topk_weight");
            const auto golden_scores = c.f64(L + "router.scores");
            const auto our_scores = to_f64(scores.cview());
            double score_err = 0;
            for (std::size_t i = 0; i < our_scores.size(); ++i)
                score_err = std::max(score_err, std::abs(our_scores[i] - golden_scores[i]));
            std::int64_t differing = 0;
            std::vector<double> ours_w, ref_w;
            for (std::int64_t t = 0; t < n; ++t) {
                bool same = true;
                for (std::int64_t j = 0; j < k; ++j) same = same && iv(t, j) == golden_idx[t * k + j];
                if (same) {
                    for (std::int64_t j = 0; j < k; ++j) {
                        ours_w.push_back(wv(t, j));
                        ref_w.push_back(golden_w[t * k + j]);
                    }
                    continue;
                }
                ++differing;
                INFO(name << " layer " << layer << " token " << t << ": experts differ from the reference");
                REQUIRE(!std::is_same_v<A, T>);  // f64/f32: exact agreement required
                // Rank by rank, the reference score of our choice is within
                // twice the measured score error of the reference's choice.
                for (std::int64_t j = 0; j < k; ++j)
                    CHECK(std::abs(golden_scores[t * e + iv(t, j)] - golden_scores[t * e + golden_idx[t * k + j]]) <=
                          2 * score_err);
            }
            if (differing > 0)
                WARN(fmt::format("{} [{}] {}: {} of {} tokens chose different experts (near ties)", name,
                                 DTypeTraits<T>::name, L, differing, n));
            compare(name + "/" + L + "router.topk_weight", DTypeTraits<T>::name, ours_w, ref_w,
                    {std::ssize(ours_w) / k, k}, tolerance<T>());
        }
    }
}

// Properties every routing decision must have, checked on many random
// tokens against an independent computation (not the library's helpers).
TEST_CASE("Routing invariants hold on random logits: distinct experts, group limits, weight rule", "[router]") {
    std::mt19937_64 rng(42);
    std::normal_distribution<double> normal(0.0, 2.0);
    const std::int64_t n = 2000;

    struct Shape {
        int e, n_group, topk_group, k;
        bool norm;
        double rsf;
    };
    // DeepSeek-V2 (160 experts, 8 groups keep 3, top-6, x16), V2-Lite-like
    // normalised top-6, top-1 (never normalised) and a single group.
    const Shape shapes[] = {{160, 8, 3, 6, false, 16.0},
                            {64, 1, 1, 6, true, 1.0},
                            {16, 4, 2, 1, true, 1.5},
                            {12, 3, 1, 4, true, 2.5},
                            {32, 1, 1, 3, false, 2.0}};
    for (const auto& s : shapes) {
        INFO(fmt::format("E {} groups {} keep {} K {} norm {} scale {}", s.e, s.n_group, s.topk_group, s.k, s.norm,
                         s.rsf));
        std::vector<double> logits(static_cast<std::size_t>(n * s.e));
        for (auto& v : logits) v = normal(rng);
        const GroupLimitedGreedy glg{s.k, s.n_group, s.topk_group, s.norm, s.rsf};
        const Greedy greedy{s.k, s.norm, s.rsf};
        const auto rg = route_each<double>(glg, logits, {}, n, s.e);
        const auto rp = route_each<double>(greedy, logits, {}, n, s.e);
        std::int64_t bad_scores = 0, bad_distinct = 0, bad_group = 0, bad_choice = 0, bad_weight = 0;
        for (std::int64_t t = 0; t < n; ++t) {
            const auto scores = softmax(row(logits, s.e, t));
            for (const auto* r : {&rg, &rp}) {
                const bool grouped = r == &rg;
                for (int i = 0; i < s.e; ++i)
                    if (std::abs(r->scores[t * s.e + i] - scores[i]) > 1e-14) ++bad_scores;
                const std::vector<std::int32_t> idx(r->idx.begin() + t * s.k, r->idx.begin() + (t + 1) * s.k);
                if (std::set<std::int32_t>(idx.begin(), idx.end()).size() != idx.size() ||
                    std::any_of(idx.begin(), idx.end(), [&](auto x) { return x < 0 || x >= s.e; }))
                    ++bad_distinct;
                const auto allowed =
                    grouped ? best_groups(scores, s.n_group, s.topk_group, group_max) : std::vector<bool>{};
                if (grouped && std::any_of(idx.begin(), idx.end(), [&](auto x) { return !allowed[x]; })) ++bad_group;
                if (idx != top_indices(scores, s.k, allowed)) ++bad_choice;
                double sum = 0;
                for (auto x : idx) sum += scores[x];
                for (int j = 0; j < s.k; ++j) {
                    const double expect = s.k > 1 && s.norm ? scores[idx[j]] / sum : scores[idx[j]] * s.rsf;
                    if (std::abs(r->weight[t * s.k + j] - expect) > 1e-12 * std::max(1.0, expect)) ++bad_weight;
                }
                if (s.k > 1 && s.norm) {
                    const double wsum =
                        std::accumulate(r->weight.begin() + t * s.k, r->weight.begin() + (t + 1) * s.k, 0.0);
                    if (std::abs(wsum - 1.0) > 1e-12) ++bad_weight;
                }
            }
        }
        CHECK(bad_scores == 0);
        CHECK(bad_distinct == 0);
        CHECK(bad_group == 0);
        CHECK(bad_choice == 0);
        CHECK(bad_weight == 0);
        // With one group the group limit is no limit: both policies agree.
        if (s.n_group == 1) CHECK(rg.idx == rp.idx);
    }
}

TEST_CASE("SigmoidWithBias: the bias steers which experts are chosen, never their weights", "[router]") {
    std::mt19937_64 rng(7);
    std::normal_distribution<double> normal(0.0, 1.5);
    const std::int64_t n = 2000;
    const int e = 32, n_group = 4, topk_group = 2, k = 4;
    const double rsf = 2.5;
    std::vector<double> logits(static_cast<std::size_t>(n * e)), bias(static_cast<std::size_t>(e));
    for (auto& v : logits) v = normal(rng);
    for (auto& v : bias) v = 0.3 * normal(rng);
    bias[5] = 10.0;  // strong enough to win every token's selection

    for (const bool norm : {true, false}) {
        INFO("norm_topk_prob " << norm);
        const SigmoidWithBias policy{k, n_group, topk_group, norm, rsf};
        const auto biased = route_each<double>(policy, logits, bias, n, e);
        const auto plain = route_each<double>(policy, logits, {}, n, e);
        std::int64_t changed = 0, bad_choice = 0, bad_weight = 0, bad_scores = 0, without_5 = 0;
        for (std::int64_t t = 0; t < n; ++t) {
            std::vector<double> scores, choice;
            for (int i = 0; i < e; ++i) {
                scores.push_back(sigmoid(logits[t * e + i]));
                choice.push_back(scores.back() + bias[i]);
            }
            for (int i = 0; i < e; ++i)
                if (std::abs(biased.scores[t * e + i] - scores[i]) > 1e-15) ++bad_scores;
            const std::vector<std::int32_t> idx(biased.idx.begin() + t * k, biased.idx.begin() + (t + 1) * k);
            const std::vector<std::int32_t> idx0(plain.idx.begin() + t * k, plain.idx.begin() + (t + 1) * k);
            if (idx != top_indices(choice, k, best_groups(choice, n_group, topk_group, group_top2_sum))) ++bad_choice;
            if (idx0 != top_indices(scores, k, best_groups(scores, n_group, topk_group, group_top2_sum))) ++bad_choice;
            if (std::find(idx.begin(), idx.end(), 5) == idx.end()) ++without_5;
            if (std::set<std::int32_t>(idx.begin(), idx.end()) != std::set<std::int32_t>(idx0.begin(), idx0.end()))
                ++changed;
            // Weights come from the unbiased sigmoid scores of the chosen experts.
            for (const auto* r : {&biased, &plain}) {
                double sum = 0;
                for (int j = 0; j < k; ++j) sum += scores[r->idx[t * k + j]];
                for (int j = 0; j < k; ++j) {
                    const double s = scores[r->idx[t * k + j]];
                    const double expect = (norm ? s / sum : s) * rsf;
                    if (std::abs(r->weight[t * k + j] - expect) > 1e-12) ++bad_weight;
                }
            }
        }
        CHECK(bad_scores == 0);
        CHECK(bad_choice == 0);
        CHECK(bad_weight == 0);
        CHECK(without_5 == 0);
        CHECK(changed > n / 2);
    }
}

namespace {

// A user-defined policy, written outside the library: scores are the raw
// logits, the K largest logits win, and they share the weight equally.
struct TopByLogit {
    int k = 2;
    int experts_per_token() const { return k; }
    template <class A>
    void route(const A* logits, const A* /*bias*/, int n, A* scores, std::int32_t* idx, A* w) const {
        for (int i = 0; i < n; ++i) scores[i] = logits[i];
        std::vector<std::int32_t> order(static_cast<std::size_t>(n));
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](auto a, auto b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
        for (int j = 0; j < k; ++j) {
            idx[j] = order[static_cast<std::size_t>(j)];
            w[j] = A(1) / static_cast<A>(k);
        }
    }
};
static_assert(RouterPolicy<TopByLogit, float> && RouterPolicy<TopByLogit, double>);

}  // namespace

TEST_CASE("A user-defined policy plugs into Router<float, cpu, Policy> and is what routes", "[router][seam]") {
    CpuCtx ctx;
    const Case c("tiny_v2");
    const std::int64_t d = c.config.hidden_size, e = c.config.n_routed_experts;
    Router<float, cpu, TopByLogit> router(c.config, TopByLogit{2});
    static_assert(!decltype(router)::is_any);
    CHECK(!router.uses_bias());
    CHECK(router.experts_per_token() == 2);
    load_component(ctx, router, c, "model.layers.1.mlp.gate.");

    const auto x_all = c.f64("layers.1.mlp_in");
    const std::int64_t n = std::ssize(x_all) / d;
    const auto x = make_tensor<float, 2>(x_all, {n, d});
    Tensor<float, cpu, 2> scores({n, e}), w({n, 2});
    Tensor<std::int32_t, cpu, 2> idx({n, 2});
    Workspace<cpu> ws;
    router.forward(ctx, ws, x.cview(), scores.view(), idx.view(), w.view());
    const auto iv = idx.cview();
    const auto wv = w.cview();

    // The scores are the gate logits (not softmax): compare with the
    // reference's logits, and the choice with the top two of those.
    compare_view<float>("custom policy scores = layers.1.router.logits", scores.cview(), c, "layers.1.router.logits");
    const auto ref_logits = c.f64("layers.1.router.logits");
    for (std::int64_t t = 0; t < n; ++t) {
        const auto want = top_indices(row(ref_logits, e, t), 2);
        CHECK(iv(t, 0) == want[0]);
        CHECK(iv(t, 1) == want[1]);
        CHECK(wv(t, 0) == 0.5f);
        CHECK(wv(t, 1) == 0.5f);
    }
}
