// RMSNorm: y = x * rsqrt(mean(x^2) + eps) * weight, reduced in f32 or wider.
#pragma once

#include "dsv2/layers/common.hpp"

namespace dsv2 {

template <class T, class B>
struct RMSNorm {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;

    Tensor<dense_t<T>, B, 1> weight;  // (D)
    double eps = 1e-6;

    RMSNorm() = default;
    RMSNorm(std::int64_t dim, double epsilon) : weight({dim}), eps(epsilon) {}

    template <class F>
    void for_each_weight(F&& f) {
        f("weight", weight);
    }

    // `y` may alias `x`.
    void forward(Context<B>& ctx,
                 View<const A, B, 2> x,  // (N, D)
                 View<A, B, 2> y) const  // (N, D)
    {
        rms_norm(ctx, x, weight.cview(), eps, y);
    }
};

}  // namespace dsv2
