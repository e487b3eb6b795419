// The prefill GEMM (backend/cpu/gemm_panels.hpp) against double loops: every
// weight type widens to f32 exactly and the activations are not rounded, so
// y must equal the exact product within the f32 summation bound — per output
// at most k (one accumulator lane, k FMAs) roundings of 2^-24 of Σ|x w|, plus
// one for an int8 row's scale and, with K in blocks (k_block: many rows
// take K in blocks that keep their panels in L2), one per block for adding
// the partial sums in y.
#include <catch2/catch.hpp>
#include <dsv2/dsv2.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using dsv2::bf16;
using dsv2::cpu;
using dsv2::f16;

namespace {

template <class T>
std::vector<T> random_weights(std::size_t n, std::uint32_t seed) {
    std::vector<T> v(n);
    std::mt19937 rng(seed);
    if constexpr (std::is_same_v<T, std::int8_t>) {
        std::uniform_int_distribution<int> d(-127, 127);
        for (auto& e : v) e = static_cast<std::int8_t>(d(rng));
    } else {
        std::normal_distribution<float> d(0.0f, 0.05f);
        for (auto& e : v) e = dsv2::convert<T>(d(rng));
    }
    return v;
}

double as_double(std::int8_t v) { return v; }
template <class T>
double as_double(T v) { return dsv2::convert<double>(v); }

template <class T>
const char* type_name() {
    if constexpr (std::is_same_v<T, std::int8_t>) {
        return "int8";
    } else {
        return dsv2::DTypeTraits<T>::name.data();
    }
}

// Runs the kernel on (n, k) x (m, k) with padded leading dimensions and a
// NaN guard column in y; returns the worst error over its bound.
template <class T>
double check_shape(dsv2::Context<cpu>& ctx, std::int64_t n, std::int64_t k, std::int64_t m, bool scaled) {
    const std::int64_t ldx = k + 3, ldw = k + 5, ldy = m + 1;
    std::vector<float> x(static_cast<std::size_t>(n * ldx));
    std::mt19937 rng(static_cast<std::uint32_t>(n * 7919 + k * 31 + m));
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (auto& v : x) v = d(rng);
    const auto w = random_weights<T>(static_cast<std::size_t>(m * ldw), 12);
    std::vector<float> s(static_cast<std::size_t>(m));
    std::uniform_real_distribution<float> scale(1e-3f, 2e-2f);
    for (auto& v : s) v = scale(rng);
    std::vector<float> y(static_cast<std::size_t>(n * ldy), std::nanf(""));
    REQUIRE(dsv2::cpu_detail::try_gemm_panels(ctx, x.data(), ldx, n, w.data(), ldw, scaled ? s.data() : nullptr, m,
                                              k, y.data(), ldy, n * m * k >= 4096));
    const double roundings =
        double(k) + double((k + dsv2::cpu_detail::k_block(n, k) - 1) / dsv2::cpu_detail::k_block(n, k)) +
        (scaled ? 1.0 : 0.0);
    double worst = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        REQUIRE(std::isnan(y[static_cast<std::size_t>(i * ldy + m)]));
        for (std::int64_t r = 0; r < m; ++r) {
            double exact = 0, abs_sum = 0;
            for (std::int64_t j = 0; j < k; ++j) {
                const double p = double(x[static_cast<std::size_t>(i * ldx + j)]) *
                                 as_double(w[static_cast<std::size_t>(r * ldw + j)]);
                exact += p;
                abs_sum += std::abs(p);
            }
            const double sr = scaled ? s[static_cast<std::size_t>(r)] : 1.0;
            const double got = y[static_cast<std::size_t>(i * ldy + r)];
            REQUIRE(std::isfinite(got));
            const double bound = roundings * std::ldexp(1.0, -24) * sr * abs_sum;
            worst = std::max(worst, std::abs(got - sr * exact) / bound);
        }
    }
    return worst;
}

}  // namespace

TEMPLATE_TEST_CASE("prefill GEMM equals the exact product of f32 activations and widened weights",
                   "[kernels][gemm_panels]", bf16, f16, std::int8_t) {
    using T = TestType;
    if (!dsv2::cpu_detail::has_avx512()) {
        WARN("no AVX-512 on this CPU: linear() uses Eigen's GEMM, nothing to test here");
        return;
    }
    dsv2::Context<cpu> ctx(2);
    const bool scaled = std::is_same_v<T, std::int8_t>;
    double worst = 0;
    // Panels of 16 activation rows (in pairs), tiles of 12 weight rows, K in
    // vectors of 16.
    for (std::int64_t n : {5, 16, 17, 32, 33, 67}) {
        for (std::int64_t k : {1, 15, 16, 33, 255, 256, 257, 600}) {
            for (std::int64_t m : {1, 5, 12, 13, 24, 70}) {
                INFO("n " << n << ", k " << k << ", m " << m);
                worst = std::max(worst, check_shape<T>(ctx, n, k, m, scaled));
                REQUIRE(worst <= 1.0);
            }
        }
    }
    // One MoE-expert-sized product: K = 2048, many tiles over both threads.
    worst = std::max(worst, check_shape<T>(ctx, 19, 2048, 300, scaled));
    // Enough rows that K goes in blocks (608 padded rows: blocks of 416).
    REQUIRE(dsv2::cpu_detail::k_block(600, 1000) < 1000);
    worst = std::max(worst, check_shape<T>(ctx, 600, 1000, 13, scaled));
    // K wider than a widened weight tile (kTileK columns): blocks even for few rows.
    constexpr std::int64_t wide = dsv2::cpu_detail::kTileK + 300;
    REQUIRE(dsv2::cpu_detail::k_block(19, wide) == dsv2::cpu_detail::kTileK);
    worst = std::max(worst, check_shape<T>(ctx, 19, wide, 30, scaled));
    REQUIRE(worst <= 1.0);
    std::printf("gemm_panels<%s>: worst error %.3f of the f32 summation bound\n",
                type_name<T>(), worst);
}

TEST_CASE("linear() with bf16 weights takes the prefill GEMM beyond the GEMV rows", "[kernels][gemm_panels]") {
    if (!dsv2::cpu_detail::has_avx512()) return;
    dsv2::Context<cpu> ctx(2);
    const std::int64_t n = 9, k = 130, m = 37;
    const auto wv = random_weights<bf16>(static_cast<std::size_t>(m * k), 22);
    dsv2::Tensor<float, cpu, 2> x({n, k}), y({n, m});
    dsv2::Tensor<bf16, cpu, 2> w({m, k});
    for (std::int64_t i = 0; i < n * k; ++i) x.data()[i] = std::sin(0.1f * float(i));
    std::copy(wv.begin(), wv.end(), w.data());
    dsv2::linear(ctx, x.cview(), w.cview(), y.view());
    std::vector<float> direct(static_cast<std::size_t>(n * m));
    REQUIRE(dsv2::cpu_detail::try_gemm_panels(ctx, x.data(), k, n, w.data(), k, nullptr, m, k, direct.data(), m,
                                              false));
    for (std::int64_t i = 0; i < n * m; ++i) REQUIRE(y.data()[i] == direct[static_cast<std::size_t>(i)]);
}
