// SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)). The dense layers,
// every routed expert and the merged shared experts are all this.
#pragma once

#include "dsv2/layers/common.hpp"

namespace dsv2 {

template <class T, class B>
struct MLP {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;

    Matrix<T, B> gate_proj;  // (F, D)
    Matrix<T, B> up_proj;    // (F, D)
    Matrix<T, B> down_proj;  // (D, F)

    MLP() = default;
    MLP(std::int64_t hidden, std::int64_t width)
        : gate_proj({width, hidden}), up_proj({width, hidden}), down_proj({hidden, width}) {}

    std::int64_t width() const { return gate_proj.size(0); }

    template <class F>
    void for_each_weight(F&& f) {
        f("gate_proj.weight", gate_proj);
        f("up_proj.weight", up_proj);
        f("down_proj.weight", down_proj);
    }

    void forward(Context<B>& ctx, Workspace<B>& ws,
                 View<const A, B, 2> x,  // (N, D)
                 View<A, B, 2> y) const  // (N, D)
    {
        typename Workspace<B>::Scope scope(ws);
        const std::int64_t n = x.shape[0];
        auto gate = ws.template take<A>(std::array{n, width()});  // (N, F)
        auto up = ws.template take<A>(std::array{n, width()});    // (N, F)
        linear(ctx, x, gate_proj.cview(), gate);
        linear(ctx, x, up_proj.cview(), up);
        silu_mul(ctx, cview(gate), cview(up), gate);
        linear(ctx, cview(gate), down_proj.cview(), y);
    }
};

}  // namespace dsv2
