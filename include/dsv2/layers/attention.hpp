// The attention seam: what a self-attention type must provide so that
// DecoderLayer<T, B, Attn> and Model<T, B, Attn> run it. MLA (the default)
// and GQA (MHA, GQA and MQA by their number of key/value heads) satisfy it;
// a new attention is a new header with a type that satisfies it, and no
// edit of the library (docs/variants.md walks through one).
//
// An attention type
//  - names its cache type `Cache` (the layout it keeps per token and layer:
//    MLA the latent rows, GQA the per-head K/V rows), which satisfies
//    PagedCache: sequences, paging, slots, block tables and byte accounting,
//    plus `Cache::for_config(ctx, cfg, max_tokens, max_sequences, page_size)`;
//  - is constructible from a Config, allocating its weights;
//  - visits its weights with `for_each_weight(f)`, HF names relative to
//    `model.layers.L.self_attn.`;
//  - has `forward(ctx, ws, step, cache, layer, x, y)`: writes the new
//    tokens' rows of layer `layer` into the cache (their slots are in
//    `step.slots`) and attends every new token over its sequence's cache.
#pragma once

#include "dsv2/layers/step.hpp"

#include <concepts>
#include <string>

namespace dsv2 {

// The cache interface the model drives (see LatentCache for the semantics).
template <class C, class B>
concept PagedCache = requires(C& c, const C& cc, Context<B>& ctx, const Config& cfg, std::int64_t id, std::int64_t n) {
    { c.add_sequence() } -> std::convertible_to<std::int64_t>;
    { c.append(id, n) } -> std::convertible_to<std::int64_t>;
    c.truncate(id, n);
    c.free(id);
    { cc.length(id) } -> std::convertible_to<std::int64_t>;
    { cc.active(id) } -> std::convertible_to<bool>;
    { cc.slot(id, n) } -> std::convertible_to<std::int64_t>;
    { cc.block_table(id) } -> std::convertible_to<View<const std::int32_t, B, 1>>;
    { cc.page_size() } -> std::convertible_to<std::int64_t>;
    { cc.n_pages() } -> std::convertible_to<std::int64_t>;
    { cc.free_page_count() } -> std::convertible_to<std::int64_t>;
    { cc.bytes_per_token() } -> std::convertible_to<std::int64_t>;
    { cc.bytes_in_use() } -> std::convertible_to<std::int64_t>;
    { cc.capacity_bytes() } -> std::convertible_to<std::int64_t>;
    { C::for_config(ctx, cfg, n, n, n) } -> std::same_as<C>;
};

namespace attention_detail {
// Stands for the callables for_each_weight receives: (name, any tensor).
struct WeightProbe {
    template <class Tensor>
    void operator()(const std::string&, Tensor&) const {}
};
}  // namespace attention_detail

template <class Attn, class T, class B>
concept Attention = requires { typename Attn::Cache; } && PagedCache<typename Attn::Cache, B> &&
    std::constructible_from<Attn, const Config&> &&
    requires(Attn& m, const Attn& a, Context<B>& ctx, Workspace<B>& ws, const Step<acc_t<T>, B>& step,
             typename Attn::Cache& cache, std::int64_t layer, View<const acc_t<T>, B, 2> x, View<acc_t<T>, B, 2> y) {
        m.for_each_weight(attention_detail::WeightProbe{});
        a.forward(ctx, ws, step, cache, layer, x, y);
    };

#define DSV2_REQUIRE_ATTENTION(Attn, T, B)                                                                      \
    static_assert(::dsv2::Attention<Attn, T, B>,                                                                \
                  "dsv2: the attention type must name a Cache (a PagedCache), be constructible from a Config, " \
                  "and provide for_each_weight(f) and forward(ctx, ws, step, cache, layer, x, y) "              \
                  "(see layers/attention.hpp and docs/variants.md)")

}  // namespace dsv2
