// RMSNorm against the f64 reference: the rmsnorm.* fixtures (rows of
// magnitude 1e-3 .. 1e3, eps = rms_norm_eps) and layer 0's input_layernorm
// with its checkpoint weights. Activations are acc_t<T>, weights stored in T.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

#include <limits>

using dsv2::acc_t;
using dsv2::cpu;
using dsv2::test::Case;
using dsv2::test::CpuCtx;

namespace {
const char* const kCases[] = {"tiny_v2", "tiny_lite", "tiny_plain"};
}

TEMPLATE_TEST_CASE("RMSNorm matches the reference on rows from 1e-3 to 1e3", "[rmsnorm]", double, float, dsv2::bf16,
                   dsv2::f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx(2);
    for (const char* name : kCases) {
        const Case c(name);
        INFO(name);
        const auto shape = c.shape("rmsnorm.x");
        REQUIRE(shape.size() == 2);
        const std::int64_t n = shape[0], d = shape[1];
        REQUIRE(d == c.config.hidden_size);

        dsv2::RMSNorm<TestType, cpu> norm(d, c.config.rms_norm_eps);
        norm.weight = dsv2::test::make_tensor<TestType, 1>(c.f64("rmsnorm.w"), {d});
        const auto x = dsv2::test::make_tensor<A, 2>(c.f64("rmsnorm.x"), {n, d});
        dsv2::Tensor<A, cpu, 2> y({n, d});
        norm.forward(ctx, x.cview(), y.view());
        dsv2::test::compare_view<TestType>("rmsnorm.out", y.cview(), c, "rmsnorm.out");
    }
}

TEMPLATE_TEST_CASE("RMSNorm output may alias its input", "[rmsnorm]", double, float, dsv2::bf16, dsv2::f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx(1);
    const Case c("tiny_plain");  // eps 1e-3: the 1e-3 row is dominated by eps
    const auto shape = c.shape("rmsnorm.x");
    dsv2::RMSNorm<TestType, cpu> norm(shape[1], c.config.rms_norm_eps);
    norm.weight = dsv2::test::make_tensor<TestType, 1>(c.f64("rmsnorm.w"), {shape[1]});
    auto x = dsv2::test::make_tensor<A, 2>(c.f64("rmsnorm.x"), {shape[0], shape[1]});
    norm.forward(ctx, x.cview(), x.view());
    dsv2::test::compare_view<TestType>("rmsnorm.out(in place)", x.cview(), c, "rmsnorm.out");
}

TEMPLATE_TEST_CASE("RMSNorm on a column slice leaves the NaN guard columns untouched", "[rmsnorm]", double, float,
                   dsv2::bf16, dsv2::f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx(1);
    const Case c("tiny_v2");
    const auto shape = c.shape("rmsnorm.x");
    const std::int64_t n = shape[0], d = shape[1], pad = 3, wide = d + 2 * pad;
    dsv2::RMSNorm<TestType, cpu> norm(d, c.config.rms_norm_eps);
    norm.weight = dsv2::test::make_tensor<TestType, 1>(c.f64("rmsnorm.w"), {d});
    const auto values = c.f64("rmsnorm.x");
    // Input and output rows live inside wider NaN-filled rows (strided views, as MLA uses).
    const A nan = std::numeric_limits<A>::quiet_NaN();
    dsv2::Tensor<A, cpu, 2> xbuf({n, wide}), ybuf({n, wide});
    std::fill(xbuf.data(), xbuf.data() + xbuf.numel(), nan);
    std::fill(ybuf.data(), ybuf.data() + ybuf.numel(), nan);
    auto xv = xbuf.view().cols(pad, pad + d);
    auto yv = ybuf.view().cols(pad, pad + d);
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < d; ++j) xv(i, j) = static_cast<A>(values[static_cast<std::size_t>(i * d + j)]);
    norm.forward(ctx, dsv2::cview(xv), yv);
    dsv2::test::compare_view<TestType>("rmsnorm.out(strided)", dsv2::cview(yv), c, "rmsnorm.out");
    std::int64_t touched = 0;
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < wide; ++j)
            if ((j < pad || j >= pad + d) && !std::isnan(ybuf.view()(i, j))) ++touched;
    CHECK(touched == 0);
}

TEMPLATE_TEST_CASE("input_layernorm of layer 0 with checkpoint weights", "[rmsnorm]", double, float, dsv2::bf16,
                   dsv2::f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx(2);
    for (const char* name : kCases) {
        const Case c(name);
        INFO(name);
        const auto shape = c.shape("layers.0.in");
        dsv2::RMSNorm<TestType, cpu> norm(c.config.hidden_size, c.config.rms_norm_eps);
        dsv2::test::load_component(ctx, norm, c, "model.layers.0.input_layernorm.");
        const auto x = dsv2::test::make_tensor<A, 2>(c.f64("layers.0.in"), {shape[0], shape[1]});
        dsv2::Tensor<A, cpu, 2> y({shape[0], shape[1]});
        norm.forward(ctx, x.cview(), y.view());
        dsv2::test::compare_view<TestType>("layers.0.attn_in", y.cview(), c, "layers.0.attn_in");
    }
}

TEST_CASE("RMSNorm rejects mismatched shapes", "[rmsnorm][errors]") {
    CpuCtx ctx(1);
    dsv2::RMSNorm<float, cpu> norm(8, 1e-6);
    dsv2::Tensor<float, cpu, 2> x({3, 7}), y({3, 7}), y2({2, 8}), x8({3, 8});
    REQUIRE_THROWS_AS(norm.forward(ctx, x.cview(), y.view()), dsv2::ShapeError);
    REQUIRE_THROWS_WITH(norm.forward(ctx, x.cview(), y.view()), Catch::Contains("rms_norm") && Catch::Contains("(3, 7)"));
    REQUIRE_THROWS_WITH(norm.forward(ctx, x8.cview(), y2.view()), Catch::Contains("rms_norm"));
}
