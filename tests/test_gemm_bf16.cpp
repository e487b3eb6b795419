// The bf16 dot-product GEMM (backend/cpu/gemm_bf16.hpp) against double
// loops: (a) the exact product of the rounded activations bf16(x) and the
// weights (bf16, or int8 with row scales), within the f32 summation bound —
// this pins the kernel's arithmetic, rounding of x included; (b) the
// f32-activation product, whose normalised squared error measures what
// rounding x to bf16 costs.
#include <catch2/catch.hpp>
#include <dsv2/dsv2.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using dsv2::bf16;
using dsv2::cpu;

namespace {

template <class T>
std::vector<T> random_values(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<T> v(n);
    for (auto& e : v) e = dsv2::convert<T>(d(rng));
    return v;
}

struct Errors {
    double worst_bound_ratio = 0;  // max |y - exact(bf16(x) w)| / bound, must be ≤ 1
    double worst_rel = 0;          // max |y - exact(bf16(x) w)| / Σ|bf16(x) w|
    double sq_err = 0, sq_ref = 0;  // against the f32-activation product
};

// Runs the kernel on (n, k) x (m, k) with padded leading dimensions and a
// NaN guard column in y, and accumulates the errors of both comparisons.
void check_shape(dsv2::Context<cpu>& ctx, std::int64_t n, std::int64_t k, std::int64_t m, Errors& e) {
    const std::int64_t ldx = k + 3, ldw = k + 5, ldy = m + 1;
    const auto x = random_values<float>(static_cast<std::size_t>(n * ldx), 11);
    const auto w = random_values<bf16>(static_cast<std::size_t>(m * ldw), 12, 0.05f);
    std::vector<float> y(static_cast<std::size_t>(n * ldy), std::nanf(""));
    REQUIRE(dsv2::cpu_detail::try_gemm_bf16(ctx, x.data(), ldx, n, w.data(), ldw, m, k, y.data(), ldy,
                                            n * m * k >= 4096));
    // Each output is one accumulator lane: two roundings per column pair.
    const double bound_steps = 2.0 * double((k + 1) / 2);
    for (std::int64_t i = 0; i < n; ++i) {
        REQUIRE(std::isnan(y[static_cast<std::size_t>(i * ldy + m)]));
        for (std::int64_t r = 0; r < m; ++r) {
            double rounded = 0, abs_sum = 0, exact = 0;
            for (std::int64_t j = 0; j < k; ++j) {
                const double wv = double(static_cast<float>(w[static_cast<std::size_t>(r * ldw + j)]));
                const float xv = x[static_cast<std::size_t>(i * ldx + j)];
                const double xb = double(static_cast<float>(bf16(xv)));
                rounded += xb * wv;
                abs_sum += std::abs(xb * wv);
                exact += double(xv) * wv;
            }
            const double got = y[static_cast<std::size_t>(i * ldy + r)];
            REQUIRE(std::isfinite(got));
            const double err = std::abs(got - rounded);
            const double bound = bound_steps * std::ldexp(1.0, -24) * abs_sum;
            e.worst_bound_ratio = std::max(e.worst_bound_ratio, err / bound);
            e.worst_rel = std::max(e.worst_rel, err / abs_sum);
            e.sq_err += (got - exact) * (got - exact);
            e.sq_ref += exact * exact;
        }
    }
}

}  // namespace

TEST_CASE("bf16 GEMM equals the exact product of bf16 activations and weights", "[kernels][gemm_bf16]") {
    if (!dsv2::cpu_detail::has_avx512_bf16()) {
        WARN("no AVX512-BF16 on this CPU: linear() uses the f32 path, nothing to test here");
        return;
    }
    dsv2::Context<cpu> ctx(2);
    Errors e;
    // Panels of 16 activation rows (pairs of panels), tiles of 12 weight rows.
    for (std::int64_t n : {5, 8, 13, 16, 17, 32, 33, 67}) {
        for (std::int64_t k : {1, 2, 31, 32, 33, 100, 301}) {
            for (std::int64_t m : {1, 2, 5, 11, 12, 13, 24, 70}) {
                INFO("n " << n << ", k " << k << ", m " << m);
                check_shape(ctx, n, k, m, e);
                REQUIRE(e.worst_bound_ratio <= 1.0);
            }
        }
    }
    // One MoE-expert-sized product: K = 2048 over many blocks and threads.
    check_shape(ctx, 19, 2048, 300, e);
    REQUIRE(e.worst_bound_ratio <= 1.0);
    REQUIRE(e.worst_rel <= 1e-6);
    // Rounding x to bf16 errs by up to half an ulp, 2^-8 of the leading power
    // of two, so the normalised squared error of random data is about
    // (2^-8)^2 / 3 · E[1/mantissa^2] ≈ 2.5e-6 (measured 2.8e-6).
    const double nmse = e.sq_err / e.sq_ref;
    std::printf("gemm_bf16: worst error %.2e of sum |x w| (bound ratio %.2f); vs f32 activations NMSE %.2e\n",
                e.worst_rel, e.worst_bound_ratio, nmse);
    REQUIRE(nmse <= 5e-6);
}

TEST_CASE("linear() with bf16 weights takes the bf16 GEMM beyond the GEMV rows", "[kernels][gemm_bf16]") {
    if (!dsv2::cpu_detail::has_avx512_bf16()) return;
    dsv2::Context<cpu> ctx(2);
    const std::int64_t n = 9, k = 130, m = 37;
    const auto xv = random_values<float>(static_cast<std::size_t>(n * k), 21);
    const auto wv = random_values<bf16>(static_cast<std::size_t>(m * k), 22);
    dsv2::Tensor<float, cpu, 2> x({n, k}), y({n, m});
    dsv2::Tensor<bf16, cpu, 2> w({m, k});
    std::copy(xv.begin(), xv.end(), x.data());
    std::copy(wv.begin(), wv.end(), w.data());
    dsv2::linear(ctx, x.cview(), w.cview(), y.view());
    std::vector<float> direct(static_cast<std::size_t>(n * m));
    REQUIRE(dsv2::cpu_detail::try_gemm_bf16(ctx, x.data(), k, n, w.data(), k, m, k, direct.data(), m, false));
    for (std::int64_t i = 0; i < n * m; ++i) REQUIRE(y.data()[i] == direct[static_cast<std::size_t>(i)]);
}

TEST_CASE("int8 weights through the bf16 GEMM equal the exact scaled product of bf16 activations", "[kernels][gemm_bf16]") {
    if (!dsv2::cpu_detail::has_avx512_bf16()) return;
    dsv2::Context<cpu> ctx(2);
    std::mt19937 rng(31);
    std::uniform_int_distribution<int> value(-127, 127);
    std::uniform_real_distribution<float> scale(1e-3f, 2e-2f);
    double worst_ratio = 0;
    for (std::int64_t n : {5, 16, 17, 40}) {
        for (std::int64_t k : {1, 33, 64, 301}) {
            for (std::int64_t m : {1, 12, 13, 30}) {
                INFO("n " << n << ", k " << k << ", m " << m);
                const std::int64_t ldx = k + 1, ldq = k + 7, ldy = m + 2;
                const auto x = random_values<float>(static_cast<std::size_t>(n * ldx), 41);
                std::vector<std::int8_t> q(static_cast<std::size_t>(m * ldq));
                for (auto& v : q) v = static_cast<std::int8_t>(value(rng));
                std::vector<float> s(static_cast<std::size_t>(m));
                for (auto& v : s) v = scale(rng);
                std::vector<float> y(static_cast<std::size_t>(n * ldy), std::nanf(""));
                REQUIRE(dsv2::cpu_detail::try_gemm_q8_bf16(ctx, x.data(), ldx, n, q.data(), ldq, s.data(), m, k,
                                                           y.data(), ldy, n * m * k >= 4096));
                for (std::int64_t i = 0; i < n; ++i) {
                    REQUIRE(std::isnan(y[static_cast<std::size_t>(i * ldy + m)]));
                    for (std::int64_t r = 0; r < m; ++r) {
                        double exact = 0, abs_sum = 0;
                        for (std::int64_t j = 0; j < k; ++j) {
                            const double xb = double(static_cast<float>(bf16(x[static_cast<std::size_t>(i * ldx + j)])));
                            const double p = xb * q[static_cast<std::size_t>(r * ldq + j)];
                            exact += p;
                            abs_sum += std::abs(p);
                        }
                        const double sr = s[static_cast<std::size_t>(r)];
                        const double err = std::abs(y[static_cast<std::size_t>(i * ldy + r)] - sr * exact);
                        // Two roundings per column pair, one for the scale.
                        const double bound = (2.0 * double((k + 1) / 2) + 1.0) * std::ldexp(1.0, -24) * sr * abs_sum;
                        worst_ratio = std::max(worst_ratio, err / bound);
                        REQUIRE(err <= bound);
                    }
                }
            }
        }
    }
    std::printf("gemm_q8_bf16: worst error %.2f of the f32 summation bound\n", worst_ratio);
}
