// SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)). The dense layers,
// every routed expert and the merged shared experts are all this.
#pragma once

#include "dsv2/layers/common.hpp"

#include <vector>

namespace dsv2 {

template <class T, class B>
struct MLP;

// One MLP applied to some rows: y = mlp(x).
template <class T, class B>
struct MlpCall {
    const MLP<T, B>* mlp;
    View<const acc_t<T>, B, 2> x;  // (N, D)
    View<acc_t<T>, B, 2> y;        // (N, D)
};

// Several MLPs at once — the experts a step routed to and the shared
// experts — as two grouped products (gate and up of all, then down of all)
// around the activation. A decode token then costs two fork/joins for its
// whole MoE instead of three per expert.
template <class T, class B>
void forward_group(Context<B>& ctx, Workspace<B>& ws, const std::vector<MlpCall<T, B>>& calls) {
    using A = acc_t<T>;
    using W = decltype(std::declval<const MLP<T, B>&>().gate_proj.cview());
    typename Workspace<B>::Scope scope(ws);
    std::vector<Product<A, W, B>> gate_up, down;
    std::vector<View<A, B, 2>> gates, ups;
    for (const auto& c : calls) {
        const std::array shape{c.x.shape[0], c.mlp->width()};
        gates.push_back(ws.template take<A>(shape));  // (N, F)
        ups.push_back(ws.template take<A>(shape));    // (N, F)
        gate_up.push_back({c.x, c.mlp->gate_proj.cview(), gates.back()});
        gate_up.push_back({c.x, c.mlp->up_proj.cview(), ups.back()});
    }
    linear_group(ctx, gate_up);
    for (std::size_t i = 0; i < calls.size(); ++i) {
        silu_mul(ctx, cview(gates[i]), cview(ups[i]), gates[i]);
        down.push_back({cview(gates[i]), calls[i].mlp->down_proj.cview(), calls[i].y});
    }
    linear_group(ctx, down);
}

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
        forward_group(ctx, ws, std::vector<MlpCall<T, B>>{{this, x, y}});
    }
};

}  // namespace dsv2
