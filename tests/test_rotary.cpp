// Rotary embedding with YaRN: inverse frequencies and rotated outputs
// against the f64 reference (tiny cases and DeepSeek-V2's real settings),
// the correction range recomputed here from the YaRN formulas, and the two
// properties rotary must have: pair norms are kept (times mscale), and
// <rot(q, m), rot(k, n)> depends only on m - n.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

#include <cmath>
#include <fstream>
#include <numbers>
#include <random>

using dsv2::acc_t;
using dsv2::Config;
using dsv2::cpu;
using dsv2::test::Case;
using dsv2::test::CpuCtx;
using json = nlohmann::json;

namespace {

// rotary_dsv2's config.json holds only the rope fields: lay them over the
// DeepSeek-V2 preset so that it parses as a whole config.
Config rotary_dsv2_config() {
    std::ifstream in(dsv2::test::data_dir() / "rotary_dsv2" / "config.json");
    REQUIRE(in.good());
    json j = dsv2::to_json(Config::deepseek_v2());
    j.merge_patch(json::parse(in));
    return dsv2::config_from_json(j, "rotary_dsv2/config.json");
}

json rotary_dsv2_meta() {
    std::ifstream in(dsv2::test::data_dir() / "rotary_dsv2" / "meta.json");
    REQUIRE(in.good());
    return json::parse(in);
}

struct RotaryCase {
    std::string name;
    Config config;
};

std::vector<RotaryCase> rotary_cases() {
    std::vector<RotaryCase> out;
    for (const char* n : {"tiny_v2", "tiny_lite", "tiny_plain"}) out.push_back({n, Case(n).config});
    out.push_back({"rotary_dsv2", rotary_dsv2_config()});
    return out;
}

std::vector<double> read_f64(const std::string& c, const std::string& file) {
    return dsv2::read_npy(dsv2::test::data_dir() / c / (file + ".npy")).as<double>(file);
}
std::vector<std::int64_t> read_i64(const std::string& c, const std::string& file) {
    return dsv2::read_npy(dsv2::test::data_dir() / c / (file + ".npy")).as<std::int64_t>(file);
}

// Rotates rows x (N, Dr) at `positions` with Rotary<T>; returns (N, Dr) in the HF layout.
template <class T>
std::vector<double> rotate(CpuCtx& ctx, const Config& cfg, const std::vector<double>& x,
                           const std::vector<std::int64_t>& positions) {
    using A = acc_t<T>;
    const std::int64_t n = std::ssize(positions), d = cfg.qk_rope_head_dim;
    const dsv2::Rotary<T, cpu> rot(ctx, cfg);
    dsv2::Tensor<std::int64_t, cpu, 1> pos({n});
    std::copy(positions.begin(), positions.end(), pos.data());
    dsv2::Tensor<A, cpu, 2> cos({n, d / 2}), sin({n, d / 2});
    rot.tables(ctx, pos.cview(), cos.view(), sin.view());
    auto xs = dsv2::test::make_tensor<A, 3>(x, {n, 1, d});
    dsv2::Rotary<T, cpu>::apply(ctx, cos.cview(), sin.cview(), xs.view());
    return dsv2::test::to_f64(xs.cview());
}

}  // namespace

TEST_CASE("rotary_inv_freq matches the reference, tiny cases and DeepSeek-V2's settings", "[rotary]") {
    for (const auto& rc : rotary_cases()) {
        INFO(rc.name);
        const auto inv = dsv2::rotary_inv_freq(rc.config);
        const auto expected = read_f64(rc.name, "rotary.inv_freq");
        REQUIRE(std::ssize(inv) == rc.config.qk_rope_head_dim / 2);
        dsv2::test::compare(rc.name + "/rotary.inv_freq", "f64", inv, expected, {std::ssize(inv)},
                            dsv2::test::tolerance<double>());
    }
}

TEST_CASE("rotary_dsv2 fixture: its meta.json agrees with the config's scales", "[rotary]") {
    const Config c = rotary_dsv2_config();
    const json meta = rotary_dsv2_meta();
    CHECK(c.qk_rope_head_dim == 64);
    CHECK(c.rope_scaling.factor == 40.0);
    CHECK(c.rope_scaling.original_max_position_embeddings == 4096);
    CHECK(c.rotary_mscale() == Approx(meta["rotary_mscale"].get<double>()).epsilon(1e-14));
    CHECK(c.softmax_scale() == Approx(meta["softmax_scale"].get<double>()).epsilon(1e-14));
}

TEST_CASE("YaRN ramp for rope dim 64, base 1e4, 4096 positions, factor 40: lanes 0-10 kept, 23+ interpolated",
          "[rotary][yarn]") {
    // Correction dim of r rotations: d ln(L / (2 pi r)) / (2 ln base).
    //   r = beta_fast = 32: 64 ln(4096 / 201.06) / 18.42 = 10.47 -> floor 10
    //   r = beta_slow = 1:  64 ln(4096 / 6.2832) / 18.42 = 22.51 -> ceil 23
    const double d = 64, base = 10000, l0 = 4096, s = 40;
    auto corr = [&](double r) { return d * std::log(l0 / (r * 2 * std::numbers::pi)) / (2 * std::log(base)); };
    const double low = std::floor(corr(32)), high = std::ceil(corr(1));
    REQUIRE(low == 10);
    REQUIRE(high == 23);

    const auto inv = dsv2::rotary_inv_freq(Config::deepseek_v2());
    REQUIRE(inv.size() == 32);
    for (int i = 0; i < 32; ++i) {
        INFO("lane " << i);
        const double plain = std::pow(base, -2.0 * i / d);
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        CHECK(inv[static_cast<std::size_t>(i)] == Approx(plain * (1 - ramp) + plain / s * ramp).epsilon(1e-14));
        if (i <= 10) CHECK(inv[static_cast<std::size_t>(i)] == Approx(plain).epsilon(1e-14));
        if (i >= 23) CHECK(inv[static_cast<std::size_t>(i)] == Approx(plain / s).epsilon(1e-14));
        if (i > 10 && i < 23) {
            CHECK(inv[static_cast<std::size_t>(i)] < plain);
            CHECK(inv[static_cast<std::size_t>(i)] > plain / s);
        }
    }
    // Without scaling the frequencies are plain RoPE's.
    Config none = Config::deepseek_v2();
    none.rope_scaling = {};
    const auto plain = dsv2::rotary_inv_freq(none);
    for (int i = 0; i < 32; ++i) CHECK(plain[static_cast<std::size_t>(i)] == Approx(std::pow(base, -2.0 * i / d)).epsilon(1e-14));
}

TEMPLATE_TEST_CASE("Rotary tables + apply match the reference (HF de-interleaved output)", "[rotary]", double, float,
                   dsv2::bf16, dsv2::f16) {
    CpuCtx ctx(2);
    for (const auto& rc : rotary_cases()) {
        INFO(rc.name);
        const auto x = read_f64(rc.name, "rotary.x");
        const auto positions = read_i64(rc.name, "rotary.positions");
        const auto out = rotate<TestType>(ctx, rc.config, x, positions);
        const auto expected = read_f64(rc.name, "rotary.out");
        dsv2::test::compare(rc.name + "/rotary.out", dsv2::DTypeTraits<TestType>::name, out, expected,
                            {std::ssize(positions), rc.config.qk_rope_head_dim}, dsv2::test::tolerance<TestType>());
    }
}

TEMPLATE_TEST_CASE("rotary rotates each pair: its norm is kept (times mscale)", "[rotary][property]", double, float) {
    CpuCtx ctx(1);
    std::mt19937_64 rng(5);
    std::normal_distribution<double> normal;
    const std::vector<std::int64_t> positions = {0, 1, 7, 15, 16, 100, 4095, 4096, 40000, 163839};
    // tiny_plain: no scaling; V2: YaRN with mscale == mscale_all_dim (magnitude 1);
    // tiny_lite: YaRN with magnitude 0.1 * 0.707 * ln 8 + 1.
    for (const auto& rc : {RotaryCase{"tiny_plain", Case("tiny_plain").config}, RotaryCase{"deepseek_v2", Config::deepseek_v2()},
                           RotaryCase{"tiny_lite", Case("tiny_lite").config}}) {
        INFO(rc.name);
        const std::int64_t d = rc.config.qk_rope_head_dim, half = d / 2;
        std::vector<double> x(positions.size() * static_cast<std::size_t>(d));
        for (auto& v : x) v = normal(rng);
        const auto out = rotate<TestType>(ctx, rc.config, x, positions);
        const double m = rc.name == "tiny_lite" ? 0.1 * 0.707 * std::log(8.0) + 1 : 1.0;
        const double tol = std::is_same_v<TestType, double> ? 1e-13 : 1e-6;
        std::int64_t bad = 0;
        for (std::size_t t = 0; t < positions.size(); ++t) {
            for (std::int64_t i = 0; i < half; ++i) {
                const double* xr = &x[t * static_cast<std::size_t>(d)];
                const double* yr = &out[t * static_cast<std::size_t>(d)];
                const double before = std::hypot(xr[2 * i], xr[2 * i + 1]);
                const double after = std::hypot(yr[i], yr[i + half]);  // pair i lands at (i, i + d/2)
                if (std::abs(after - m * before) > tol * (1 + before)) ++bad;
            }
        }
        CHECK(bad == 0);
    }
}

TEMPLATE_TEST_CASE("<rot(q, m), rot(k, n)> depends only on m - n", "[rotary][property]", double, float) {
    CpuCtx ctx(1);
    const Config cfg = Config::deepseek_v2();  // YaRN, rope dim 64, original context 4096
    const std::int64_t d = cfg.qk_rope_head_dim;
    std::mt19937_64 rng(9);
    std::normal_distribution<double> normal;
    std::vector<double> q(static_cast<std::size_t>(d)), k(static_cast<std::size_t>(d));
    for (auto& v : q) v = normal(rng);
    for (auto& v : k) v = normal(rng);
    auto dot_at = [&](std::int64_t m, std::int64_t n) {
        const auto rq = rotate<TestType>(ctx, cfg, q, {m});
        const auto rk = rotate<TestType>(ctx, cfg, k, {n});
        double s = 0;
        for (std::int64_t i = 0; i < d; ++i) s += rq[static_cast<std::size_t>(i)] * rk[static_cast<std::size_t>(i)];
        return s;
    };
    double qk = 0;
    for (std::int64_t i = 0; i < d; ++i) qk += std::abs(q[static_cast<std::size_t>(i)] * k[static_cast<std::size_t>(i)]);
    const double tol = (std::is_same_v<TestType, double> ? 1e-10 : 2e-5) * qk;
    // Query positions below and above original_max_position_embeddings (4096).
    const std::int64_t starts[] = {0, 3, 100, 4090, 4096, 10000, 150000};
    std::vector<double> by_diff;
    for (const std::int64_t diff : {0, 1, 5, 1000}) {
        const double ref = dot_at(starts[0] + diff, starts[0]);
        by_diff.push_back(ref);
        for (const std::int64_t n : starts) {
            INFO("m = " << n + diff << ", n = " << n);
            CHECK(std::abs(dot_at(n + diff, n) - ref) <= tol);
        }
    }
    // Different offsets give different products, so the check above can fail.
    for (std::size_t i = 1; i < by_diff.size(); ++i) CHECK(std::abs(by_diff[i] - by_diff[i - 1]) > 100 * tol);
    // At offset 0 the product is <q, k> itself.
    double plain = 0;
    for (std::int64_t i = 0; i < d; ++i) plain += q[static_cast<std::size_t>(i)] * k[static_cast<std::size_t>(i)];
    CHECK(std::abs(by_diff[0] - plain) <= tol);
}

TEST_CASE("rotary rejects mismatched shapes", "[rotary][errors]") {
    CpuCtx ctx(1);
    const Config cfg = Case("tiny_v2").config;  // rope dim 8: tables of 4
    dsv2::Rotary<float, cpu> rot(ctx, cfg);
    dsv2::Tensor<std::int64_t, cpu, 1> pos({3});
    dsv2::Tensor<float, cpu, 2> cos({3, 4}), sin({3, 4}), cos_bad({2, 4});
    dsv2::Tensor<float, cpu, 3> x({3, 2, 8}), x_odd({3, 2, 7});
    REQUIRE_THROWS_AS(rot.tables(ctx, pos.cview(), cos_bad.view(), sin.view()), dsv2::ShapeError);
    REQUIRE_THROWS_WITH(rot.tables(ctx, pos.cview(), cos_bad.view(), sin.view()), Catch::Contains("rotary_tables"));
    using Rot = dsv2::Rotary<float, cpu>;
    REQUIRE_THROWS_WITH(Rot::apply(ctx, cos.cview(), sin.cview(), x_odd.view()),
                        Catch::Contains("apply_rotary") && Catch::Contains("(3, 2, 7)"));
    REQUIRE_THROWS_WITH(Rot::apply(ctx, cos_bad.cview(), sin.cview(), x.view()), Catch::Contains("apply_rotary"));
}
