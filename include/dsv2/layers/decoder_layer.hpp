// One transformer block:
//   h += self_attn(input_layernorm(h));  h += mlp(post_attention_layernorm(h))
// The MLP is dense or MoE as the config says for this layer index. The
// attention is any type satisfying the Attention concept (layers/attention.hpp):
// MLA by default, GQA (MHA/GQA/MQA) or a user's own.
#pragma once

#include "dsv2/layers/attention.hpp"
#include "dsv2/layers/mla.hpp"
#include "dsv2/layers/moe.hpp"

#include <string>
#include <variant>

namespace dsv2 {

template <class T, class B, class Attn = MLA<T, B>>
struct DecoderLayer {
    DSV2_REQUIRE_BACKEND(B);
    DSV2_REQUIRE_ATTENTION(Attn, T, B);
    using A = acc_t<T>;
    using Cache = typename Attn::Cache;
    using FeedForward = std::variant<MLP<T, B>, MoE<T, B>>;

    RMSNorm<T, B> input_layernorm;
    Attn self_attn;
    RMSNorm<T, B> post_attention_layernorm;
    FeedForward mlp;

    DecoderLayer() = default;
    DecoderLayer(const Config& cfg, std::int64_t index)
        : input_layernorm(cfg.hidden_size, cfg.rms_norm_eps), self_attn(cfg),
          post_attention_layernorm(cfg.hidden_size, cfg.rms_norm_eps),
          mlp(cfg.is_moe_layer(index) ? FeedForward(std::in_place_type<MoE<T, B>>, cfg)
                                      : FeedForward(std::in_place_type<MLP<T, B>>, cfg.hidden_size, cfg.intermediate_size)) {}

    bool is_moe() const { return std::holds_alternative<MoE<T, B>>(mlp); }

    template <class F>
    void for_each_weight(F&& f) {
        auto sub = [&](const char* prefix) {
            return [&f, prefix](const std::string& name, auto& t) { f(prefix + name, t); };
        };
        input_layernorm.for_each_weight(sub("input_layernorm."));
        self_attn.for_each_weight(sub("self_attn."));
        post_attention_layernorm.for_each_weight(sub("post_attention_layernorm."));
        std::visit([&](auto& m) { m.for_each_weight(sub("mlp.")); }, mlp);
    }

    // Updates the residual stream h in place.
    void forward(Context<B>& ctx, Workspace<B>& ws, const Step<A, B>& step, Cache& cache,
                 std::int64_t layer,
                 View<A, B, 2> h,  // (N, D)
                 RoutingRecord* record = nullptr) const
    {
        typename Workspace<B>::Scope scope(ws);
        const std::array shape{h.shape[0], h.shape[1]};
        auto normed = ws.template take<A>(shape);
        auto out = ws.template take<A>(shape);
        input_layernorm.forward(ctx, cview(h), normed);
        self_attn.forward(ctx, ws, step, cache, layer, cview(normed), out);
        add_inplace(ctx, h, cview(out));
        post_attention_layernorm.forward(ctx, cview(h), normed);
        if (const auto* moe = std::get_if<MoE<T, B>>(&mlp)) {
            moe->forward(ctx, ws, cview(normed), out, record);
        } else {
            std::get<MLP<T, B>>(mlp).forward(ctx, ws, cview(normed), out);
        }
        add_inplace(ctx, h, cview(out));
    }
};

}  // namespace dsv2
