// Classic multi-head attention with grouped key/value heads — the baselines
// of the paper's Table 1 and Appendix D: MHA (Hk = H), GQA (1 < Hk < H) and
// MQA (Hk = 1), one type, Hk read from the config's num_key_value_heads.
//
//   q = q_proj(x)  (N, H, Dk)      k = k_proj(x)  (N, Hk, Dk)
//   v = v_proj(x)  (N, Hk, Dv)     y = o_proj(attn(q, k, v))
// Query head h attends with key/value head h / (H / Hk), as in HF Llama.
//
// Rotary position: each head's Dk = Dn + Dr lanes are [no rope | rope], the
// last Dr lanes rotated with the model's (YaRN-capable) rotary tables in the
// DeepSeek convention (adjacent pairs, HF de-interleaved layout). With
// Dn = qk_nope_head_dim and Dr = qk_rope_head_dim this is "partial rope"
// (as GPT-NeoX/Phi do); a config with qk_nope_head_dim = 0 would be full-head
// rope, but DeepSeek's Config::validate requires Dn > 0, so studies use
// Dn = Dr = d_h / 2. Softmax scale as MLA's: Dk^-0.5 (× YaRN mscale²).
// K and V are cached after rope: see KVCache for the row layout.
#pragma once

#include "dsv2/layers/attention.hpp"
#include "dsv2/layers/kv_cache.hpp"
#include "dsv2/layers/rotary.hpp"

namespace dsv2 {

template <class T, class B>
struct GQA {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;
    using Cache = KVCache<dense_t<T>, B>;

    // Weights, with Hugging Face (Llama-style) names.
    Matrix<T, B> q_proj;  // (H*Dk, D)
    Matrix<T, B> k_proj;  // (Hk*Dk, D)
    Matrix<T, B> v_proj;  // (Hk*Dv, D)
    Matrix<T, B> o_proj;  // (D, H*Dv)

    std::int64_t heads = 0, kv_heads = 0, nope = 0, rope = 0, vdim = 0;  // H, Hk, Dn, Dr, Dv
    double softmax_scale = 1.0;

    GQA() = default;
    explicit GQA(const Config& cfg)
        : heads(cfg.num_attention_heads), kv_heads(cfg.num_key_value_heads), nope(cfg.qk_nope_head_dim),
          rope(cfg.qk_rope_head_dim), vdim(cfg.v_head_dim), softmax_scale(cfg.softmax_scale()) {
        DSV2_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, ConfigError,
                   "[gqa] num_key_value_heads {}: expected a divisor of num_attention_heads {}", kv_heads, heads);
        DSV2_CHECK(nope >= 0 && rope > 0 && rope % 2 == 0 && vdim > 0, ConfigError,
                   "[gqa] head dims: nope {} (>= 0), rope {} (positive, even), value {} (positive)", nope, rope, vdim);
        const std::int64_t d = cfg.hidden_size;
        q_proj = Matrix<T, B>({heads * k_dim(), d});
        k_proj = Matrix<T, B>({kv_heads * k_dim(), d});
        v_proj = Matrix<T, B>({kv_heads * vdim, d});
        o_proj = Matrix<T, B>({d, heads * vdim});
    }

    std::int64_t k_dim() const { return nope + rope; }                 // Dk
    std::int64_t row_width() const { return kv_heads * (k_dim() + vdim); }  // cached values per token and layer

    template <class F>
    void for_each_weight(F&& f) {
        f("q_proj.weight", q_proj);
        f("k_proj.weight", k_proj);
        f("v_proj.weight", v_proj);
        f("o_proj.weight", o_proj);
    }

    void forward(Context<B>& ctx, Workspace<B>& ws, const Step<A, B>& step, Cache& cache, std::int64_t layer,
                 View<const A, B, 2> x,  // (N, D), already input_layernorm'ed
                 View<A, B, 2> y) const  // (N, D)
    {
        typename Workspace<B>::Scope scope(ws);
        const std::int64_t n = x.shape[0], dk = k_dim(), w = row_width(), koff = kv_heads * dk;
        assert(cache.width() == w);

        // Query (N, H, Dk), rope lanes rotated.
        auto q = ws.template take<A>(std::array{n, heads, dk});
        linear(ctx, x, q_proj.cview(), q.reshape(std::array{n, heads * dk}));
        Rotary<T, B>::apply(ctx, step.cos, step.sin, q.slice(2, nope, dk));

        // New cache rows [k heads | v heads]: (N, Hk*(Dk+Dv)); rotate the keys' rope lanes, then cache.
        auto rows = ws.template take<A>(std::array{n, w});
        linear(ctx, x, k_proj.cview(), rows.cols(0, koff));
        linear(ctx, x, v_proj.cview(), rows.cols(koff, w));
        View<A, B, 3> k_new(rows.data, {n, kv_heads, dk}, {w, dk, 1});  // (N, Hk, Dk)
        Rotary<T, B>::apply(ctx, step.cos, step.sin, k_new.slice(2, nope, dk));
        cache_write(ctx, cview(rows), step.slots, cache.layer(layer));

        auto o = ws.template take<A>(std::array{n, heads, vdim});  // (N, H, Dv)
        for (const auto& s : step.sequences) {
            typename Workspace<B>::Scope seq_scope(ws);
            const std::int64_t len = s.context();
            auto ctx_rows = ws.template take<A>(std::array{len, w});  // (S, Hk*(Dk+Dv))
            cache_gather(ctx, cview(cache.layer(layer)), s.block_table, ctx_rows);
            const View<const A, B, 3> keys(ctx_rows.data, {len, kv_heads, dk}, {w, dk, 1});           // (S, Hk, Dk)
            const View<const A, B, 3> values(ctx_rows.data + koff, {len, kv_heads, vdim}, {w, vdim, 1});  // (S, Hk, Dv)
            attention(ctx, cview(q).rows(s.row_begin, s.row_begin + s.n_tokens), keys, values, s.first_position,
                      softmax_scale, o.rows(s.row_begin, s.row_begin + s.n_tokens));
        }
        linear(ctx, cview(o.reshape(std::array{n, heads * vdim})), o_proj.cview(), y);
    }
};

}  // namespace dsv2
