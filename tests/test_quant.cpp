// Weight-only int8 (core/quantized.hpp, backend/cpu/linear_q8.hpp):
// quantization round trip within half a step per element; linear() on
// quantized weights equals the f32 product with the dequantized weights
// within the bound of its activation rounding (16-bit fixed point in the
// VNNI decode kernel) or to f32 rounding (elsewhere, the prefill GEMM
// included), and is within the quantization bound of the product
// with the original weights; the VNNI kernel against the f32 int8 kernel on
// awkward shapes.
#include <catch2/catch.hpp>
#include <dsv2/dsv2.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
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
            double abs_x = 0, max_x = 0;
            for (std::int64_t j = 0; j < k; ++j) {
                abs_x += std::abs(x.data()[i * k + j]);
                max_x = std::max(max_x, static_cast<double>(std::abs(x.data()[i * k + j])));
            }
            for (std::int64_t r = 0; r < m; ++r) {
                const double a = y.data()[i * m + r], e = y_deq.data()[i * m + r], o = y_orig.data()[i * m + r];
                REQUIRE(std::isfinite(a));
                // The VNNI decode kernel (gemv_q8.hpp) rounds each activation
                // to 16-bit fixed point, off by at most max|x| / 32767 / 2:
                // |Δy| <= scale * that * Σ|q|. The other paths (the prefill
                // GEMM of gemm_panels.hpp among them) are f32-exact.
                double sum_q = 0;
                for (std::int64_t j = 0; j < k; ++j) sum_q += std::abs(q.values.data()[r * k + j]);
                const double activation_rounding = n <= 4 ? 0.5 * q.scales.data()[r] * (max_x / 32767) * sum_q : 0.0;
                REQUIRE(std::abs(a - e) <= activation_rounding + 1e-5 * (1 + std::abs(e)));
                // Each weight is off by at most half a step: |Δy| <= Σ|x| * scale / 2.
                REQUIRE(std::abs(a - o) <= 0.5 * q.scales.data()[r] * abs_x * (1 + 1e-4) + activation_rounding + 1e-5);
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

#if DSV2_X86_KERNELS
TEST_CASE("the VNNI int8 kernel stays within its fixed-point bound of the f32 int8 kernel", "[quant]") {
    if (!dsv2::cpu_detail::has_avx512_vnni()) {
        WARN("no AVX-512 VNNI on this CPU: kernel not exercised");
        return;
    }
    for (std::int64_t k : {1, 63, 64, 65, 200, 2048}) {
        for (std::int64_t n : {1, 2, 4}) {
            INFO("k " << k << ", rows " << n);
            const std::int64_t m = 11;  // two blocks of 4 rows and a tail of 3
            const auto w = random_matrix<float>(m, k, 0.05f, 5);
            const auto q = dsv2::quantize(w.cview());
            auto x = random_matrix<float>(n, k, 1.0f, 6);
            x.data()[0] = 1e4f;  // one outlier sets the fixed-point step of row 0
            std::vector<dsv2::cpu_detail::Q8Digits> digits(static_cast<std::size_t>(n));
            for (std::int64_t i = 0; i < n; ++i) REQUIRE(dsv2::cpu_detail::split_digits_avx512(x.data() + i * k, k, digits[i]));
            std::vector<float> got(static_cast<std::size_t>(n * m)), want(got.size());
            dsv2::cpu_detail::gemv_rows_q8_vnni(digits.data(), n, q.values.data(), k, k, 0, m, q.scales.data(), got.data(), m);
            dsv2::cpu_detail::gemv_rows(x.data(), k, n, q.values.data(), k, k, 0, m, want.data(), m);
            for (std::int64_t i = 0; i < n; ++i) {
                for (std::int64_t r = 0; r < m; ++r) {
                    double sum_q = 0, sum_abs = 0;
                    for (std::int64_t j = 0; j < k; ++j) {
                        sum_q += std::abs(q.values.data()[r * k + j]);
                        sum_abs += std::abs(x.data()[i * k + j] * q.values.data()[r * k + j]);
                    }
                    const double e = want[static_cast<std::size_t>(i * m + r)] * q.scales.data()[r];
                    const double bound = q.scales.data()[r] * (0.5 * digits[i].scale * sum_q + 1e-6 * sum_abs);
                    REQUIRE(std::abs(got[static_cast<std::size_t>(i * m + r)] - e) <= bound);
                }
            }
        }
    }
}

TEST_CASE("the VNNI int8 kernel reads only its rows of a strided matrix", "[quant]") {
    if (!dsv2::cpu_detail::has_avx512_vnni()) {
        WARN("no AVX-512 VNNI on this CPU: kernel not exercised");
        return;
    }
    // Rows [3, 10) of 13, with 40 bytes of padding after each row that hold
    // 127s: a kernel that strays past k or outside its rows picks them up.
    // (The prefetch ahead of the rows is bounded the same way; ASan checks it
    // does not form addresses past the matrix.)
    const std::int64_t m = 13, k = 200, ldq = k + 40, r0 = 3, r1 = 10;
    const auto w = random_matrix<float>(m, k, 0.05f, 7);
    const auto q = dsv2::quantize(w.cview());
    std::vector<std::int8_t> padded(static_cast<std::size_t>(m * ldq), 127);
    for (std::int64_t r = 0; r < m; ++r)
        std::copy_n(q.values.data() + r * k, k, padded.begin() + r * ldq);
    const auto x = random_matrix<float>(1, k, 1.0f, 8);
    dsv2::cpu_detail::Q8Digits digits;
    REQUIRE(dsv2::cpu_detail::split_digits_avx512(x.data(), k, digits));
    std::vector<float> got(static_cast<std::size_t>(m), -1.0f), dense(static_cast<std::size_t>(m));
    dsv2::cpu_detail::gemv_rows_q8_vnni(&digits, 1, padded.data(), ldq, k, r0, r1, q.scales.data(), got.data(), m);
    dsv2::cpu_detail::gemv_rows_q8_vnni(&digits, 1, q.values.data(), k, k, 0, m, q.scales.data(), dense.data(), m);
    for (std::int64_t r = 0; r < m; ++r) {
        INFO("row " << r);
        if (r >= r0 && r < r1) {
            REQUIRE(got[static_cast<std::size_t>(r)] == dense[static_cast<std::size_t>(r)]);
        } else {
            REQUIRE(got[static_cast<std::size_t>(r)] == -1.0f);  // not written
        }
    }
}

TEST_CASE("the vector digit split equals the scalar definition to the bit", "[quant]") {
    if (!dsv2::cpu_detail::has_avx512()) return;
    std::mt19937 rng(8);
    std::uniform_int_distribution<int> ticks(-40000, 40000);
    for (std::int64_t k : {1, 15, 16, 17, 63, 64, 65, 301, 2048}) {
        INFO("k " << k);
        // Multiples of half a fixed-point step, so many values sit exactly
        // on a rounding tie (nearest-even decides), plus an all-zero row.
        std::vector<float> x(static_cast<std::size_t>(k)), zero(static_cast<std::size_t>(k), 0.0f);
        for (auto& v : x) v = 0.5f * static_cast<float>(ticks(rng)) / 32767.0f * 3.0f;
        for (const auto* row : {x.data(), zero.data()}) {
            dsv2::cpu_detail::Q8Digits fast, slow;
            REQUIRE(dsv2::cpu_detail::split_digits_avx512(row, k, fast));
            REQUIRE(dsv2::cpu_detail::split_digits_reference(row, k, slow));
            REQUIRE(fast.scale == slow.scale);
            REQUIRE(fast.hi == slow.hi);
            REQUIRE(fast.lo == slow.lo);
        }
    }
}

TEST_CASE("int8 decode propagates a non-finite activation instead of hiding it", "[quant]") {
    dsv2::Context<cpu> ctx(2);
    const std::int64_t k = 70, m = 9;
    const auto w = random_matrix<float>(m, k, 0.05f, 9);
    const auto q = dsv2::quantize(w.cview());
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        auto x = random_matrix<float>(2, k, 1.0f, 10);
        x.data()[5] = bad;  // row 0 only
        dsv2::cpu_detail::Q8Digits d;
        if (dsv2::cpu_detail::has_avx512()) REQUIRE_FALSE(dsv2::cpu_detail::split_digits_avx512(x.data(), k, d));
        REQUIRE_FALSE(dsv2::cpu_detail::split_digits_reference(x.data(), k, d));
        dsv2::Tensor<float, cpu, 2> y({2, m}), y_row1({1, m});
        dsv2::linear(ctx, x.cview(), q.cview(), y.view());
        dsv2::linear(ctx, x.cview().rows(1, 2), q.cview(), y_row1.view());
        for (std::int64_t r = 0; r < m; ++r) {
            REQUIRE_FALSE(std::isfinite(y.data()[r]));  // row 0: NaN or ±Inf, never a finite guess
            // Row 1 is finite; in the f32 fallback it differs from its own
            // VNNI decode only by the fixed-point rounding (bound as above).
            REQUIRE(std::isfinite(y.data()[m + r]));
            REQUIRE(std::abs(y.data()[m + r] - y_row1.data()[r]) <= 1e-3 * (1 + std::abs(y_row1.data()[r])));
        }
    }
}
#endif
