// Weight-only int8 (core/quantized.hpp, backend/cpu/linear_q8.hpp):
// quantization round trip within half a step per element; linear() on
// quantized weights equals the f32 product with the dequantized weights to
// f32 rounding (GEMV and GEMM paths), and is within the quantization bound
// of the product with the original weights.
#include <catch2/catch.hpp>
#include <dsv2/dsv2.hpp>

#include <cmath>
#include <random>
#include <vector>

using dsv2::cpu;

namespace {

template <class T>
dsv2::Tensor<T, cpu, 2> random_matrix(std::int64_t rows, std::int64_t cols, float stddev, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, stddev);
    dsv2::Tensor<T, cpu, 2> t({rows, cols});
    for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] = dsv2::convert<T>(d(rng));
    return t;
}

}  // namespace

TEMPLATE_TEST_CASE("int8 quantization round-trips within half a step", "[quant]", float, dsv2::bf16, dsv2::f16) {
    const auto w = random_matrix<TestType>(37, 301, 0.05f, 1);
    const auto q = dsv2::quantize(w.cview());
    REQUIRE(q.shape() == w.shape());
    for (std::int64_t r = 0; r < 37; ++r) {
        const float s = q.scales.data()[r];
        REQUIRE(s > 0);
        for (std::int64_t j = 0; j < 301; ++j) {
            const float orig = dsv2::convert<float>(w.data()[r * 301 + j]);
            const float back = s * q.values.data()[r * 301 + j];
            REQUIRE(std::abs(back - orig) <= 0.5f * s * (1 + 1e-5f));
        }
    }
}

TEST_CASE("an all-zero row quantizes to zeros with a finite scale", "[quant]") {
    dsv2::Tensor<float, cpu, 2> w = dsv2::Tensor<float, cpu, 2>::zeros({2, 17});
    w.data()[17 + 3] = -2.0f;
    const auto q = dsv2::quantize(w.cview());
    REQUIRE(std::isfinite(q.scales.data()[0]));
    for (int j = 0; j < 17; ++j) REQUIRE(q.values.data()[j] == 0);
    REQUIRE(q.values.data()[17 + 3] == -127);
}

TEST_CASE("linear on int8 weights equals the product with dequantized weights", "[quant]") {
    dsv2::Context<cpu> ctx(2);
    const std::int64_t k = 301, m = 515;
    const auto w = random_matrix<float>(m, k, 0.05f, 2);
    const auto q = dsv2::quantize(w.cview());
    dsv2::Tensor<float, cpu, 2> deq({m, k});
    for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t j = 0; j < k; ++j) deq.data()[r * k + j] = q.scales.data()[r] * q.values.data()[r * k + j];
    for (std::int64_t n : {1, 3, 4, 5, 33}) {  // GEMV path up to 4 rows, GEMM path above
        INFO("rows " << n);
        const auto x = random_matrix<float>(n, k, 1.0f, 3);
        dsv2::Tensor<float, cpu, 2> y({n, m}), y_deq({n, m}), y_orig({n, m});
        dsv2::linear(ctx, x.cview(), q.cview(), y.view());
        dsv2::linear(ctx, x.cview(), deq.cview(), y_deq.view());
        dsv2::linear(ctx, x.cview(), w.cview(), y_orig.view());
        for (std::int64_t i = 0; i < n; ++i) {
            double abs_x = 0;
            for (std::int64_t j = 0; j < k; ++j) abs_x += std::abs(x.data()[i * k + j]);
            for (std::int64_t r = 0; r < m; ++r) {
                const double a = y.data()[i * m + r], e = y_deq.data()[i * m + r], o = y_orig.data()[i * m + r];
                REQUIRE(std::isfinite(a));
                REQUIRE(std::abs(a - e) <= 1e-4 * (1 + std::abs(e)));
                // Each weight is off by at most half a step: |Δy| <= Σ|x| * scale / 2.
                REQUIRE(std::abs(a - o) <= 0.5 * q.scales.data()[r] * abs_x * (1 + 1e-4) + 1e-5);
            }
        }
    }
}

TEST_CASE("linear on int8 weights checks shapes at the boundary", "[quant]") {
    dsv2::Context<cpu> ctx(1);
    const auto w = random_matrix<float>(8, 16, 0.1f, 4);
    const auto q = dsv2::quantize(w.cview());
    dsv2::Tensor<float, cpu, 2> x({2, 15}), y({2, 8});
    REQUIRE_THROWS_WITH(dsv2::linear(ctx, x.cview(), q.cview(), y.view()), Catch::Contains("linear: x is (2, 15)"));
}
