// Multi-head Latent Attention (DeepSeek-V2 §2.1).
//
// Keys and values are compressed jointly into a latent c_kv (C values per
// token) plus one decoupled rope key k_pe (Dr values) shared by all heads;
// only [c_kv | k_pe] is cached. Two paths compute the same attention:
//  - naive:    decompress K and V for the whole context with kv_b_proj,
//              then ordinary multi-head attention (what HF does);
//  - absorbed: fold W_UK into the query (q_nope · W_UK gives a C-vector per
//              head) and W_UV into the output, and attend over the latent
//              rows directly — MQA with one 576-wide key head whose first
//              512 lanes are also the value. This is the inference path.
// The cache holds the rows in the element type, or in 8 bits
// (LatentFormat::int8, CPU): decode then reads them with mla_decode_q8, and
// every other step dequantizes the rows it gathers.
#pragma once

#include "dsv2/layers/latent_cache.hpp"
#include "dsv2/layers/rmsnorm.hpp"
#include "dsv2/layers/rotary.hpp"
#include "dsv2/layers/step.hpp"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace dsv2 {

// `automatic` (the default) picks per step by multiply-adds. With n new
// tokens over a context of S rows, the absorbed path spends H·(2C + Dr) per
// (query, key) pair where the naive one spends H·(Dn + Dr + Dv), 1088 against
// 320 per head at DeepSeek-V2's shapes; the naive path pays instead to
// decompress the S rows (H·C·(Dn + Dv) each) where the absorbed one absorbs
// the n queries (the same per token). So the naive path is cheaper when
// n·S·(2C − Dn − Dv) ≥ (S − n)·C·(Dn + Dv): always for a prefill from an
// empty cache, never for decode. A step takes the naive path when every
// sequence in it does (DeepSeek and vLLM split prefill and decode the same way).
enum class AttentionPath { automatic, absorbed, naive };

template <class T, class B>
struct MLA {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;
    using Cache = LatentCache<dense_t<T>, B>;  // what it caches: the latent rows (layers/attention.hpp)

    // Weights, with their Hugging Face names. Exactly one of q_proj and the
    // (q_a_proj, q_a_layernorm, q_b_proj) trio is used, as q_lora_rank says.
    Matrix<T, B> q_proj;              // (H*(Dn+Dr), D)        q_lora_rank null
    Matrix<T, B> q_a_proj;            // (Q, D)                q_lora_rank set
    RMSNorm<T, B> q_a_layernorm;      // (Q)
    Matrix<T, B> q_b_proj;            // (H*(Dn+Dr), Q)
    Matrix<T, B> kv_a_proj_with_mqa;  // (C+Dr, D)
    RMSNorm<T, B> kv_a_layernorm;     // (C)
    Matrix<T, B> kv_b_proj;           // (H*(Dn+Dv), C)
    Matrix<T, B> o_proj;              // (D, H*Dv)

    std::int64_t heads = 0, nope = 0, rope = 0, vdim = 0, rank = 0;  // H, Dn, Dr, Dv, C
    bool q_lora = false;
    double softmax_scale = 1.0;
    AttentionPath path = AttentionPath::automatic;

    MLA() = default;
    explicit MLA(const Config& cfg)
        : heads(cfg.num_attention_heads), nope(cfg.qk_nope_head_dim), rope(cfg.qk_rope_head_dim),
          vdim(cfg.v_head_dim), rank(cfg.kv_lora_rank), q_lora(cfg.q_lora_rank.has_value()),
          softmax_scale(cfg.softmax_scale()) {
        const std::int64_t d = cfg.hidden_size;
        if (q_lora) {
            q_a_proj = Matrix<T, B>({*cfg.q_lora_rank, d});
            q_a_layernorm = RMSNorm<T, B>(*cfg.q_lora_rank, Config::latent_norm_eps);
            q_b_proj = Matrix<T, B>({heads * q_dim(), *cfg.q_lora_rank});
        } else {
            q_proj = Matrix<T, B>({heads * q_dim(), d});
        }
        kv_a_proj_with_mqa = Matrix<T, B>({rank + rope, d});
        kv_a_layernorm = RMSNorm<T, B>(rank, Config::latent_norm_eps);
        kv_b_proj = Matrix<T, B>({heads * (nope + vdim), rank});
        o_proj = Matrix<T, B>({d, heads * vdim});
    }

    using WeightView = decltype(o_proj.cview());

    std::int64_t q_dim() const { return nope + rope; }

    // The path this step takes (see AttentionPath).
    bool uses_naive(const Step<A, B>& step) const {
        if (path != AttentionPath::automatic) return path == AttentionPath::naive;
        return std::all_of(step.sequences.begin(), step.sequences.end(), [&](const auto& s) {
            const double n = static_cast<double>(s.n_tokens), ctx_rows = static_cast<double>(s.context());
            return n * ctx_rows * static_cast<double>(2 * rank - nope - vdim) >=
                   (ctx_rows - n) * static_cast<double>(rank * (nope + vdim));
        });
    }
    std::int64_t latent_dim() const { return rank + rope; }

    template <class F>
    void for_each_weight(F&& f) {
        if (q_lora) {
            f("q_a_proj.weight", q_a_proj);
            f("q_a_layernorm.weight", q_a_layernorm.weight);
            f("q_b_proj.weight", q_b_proj);
        } else {
            f("q_proj.weight", q_proj);
        }
        f("kv_a_proj_with_mqa.weight", kv_a_proj_with_mqa);
        f("kv_a_layernorm.weight", kv_a_layernorm.weight);
        f("kv_b_proj.weight", kv_b_proj);
        f("o_proj.weight", o_proj);
    }

    // Attends the step's new tokens over their sequences' cached context.
    // Writes this layer's latent rows of the new tokens into the cache first.
    void forward(Context<B>& ctx, Workspace<B>& ws, const Step<A, B>& step, Cache& cache,
                 std::int64_t layer,
                 View<const A, B, 2> x,  // (N, D), already input_layernorm'ed
                 View<A, B, 2> y) const  // (N, D)
    {
        typename Workspace<B>::Scope scope(ws);
        const std::int64_t n = x.shape[0];

        // Query: (N, H, Dn+Dr), rope lanes rotated.
        // The two projections of x (the query's first and the latent) run as
        // one group.
        auto q = ws.template take<A>(std::array{n, heads, q_dim()});
        auto q_flat = q.reshape(std::array{n, heads * q_dim()});
        auto latent = ws.template take<A>(std::array{n, latent_dim()});  // (N, C+Dr)
        if (q_lora) {
            auto q_a = ws.template take<A>(std::array{n, q_a_proj.size(0)});  // (N, Q)
            linear_group(ctx, std::vector<Product<A, WeightView, B>>{{x, q_a_proj.cview(), q_a},
                                                                      {x, kv_a_proj_with_mqa.cview(), latent}});
            q_a_layernorm.forward(ctx, cview(q_a), q_a);
            linear(ctx, cview(q_a), q_b_proj.cview(), q_flat);
        } else {
            linear_group(ctx, std::vector<Product<A, WeightView, B>>{{x, q_proj.cview(), q_flat},
                                                                      {x, kv_a_proj_with_mqa.cview(), latent}});
        }
        Rotary<T, B>::apply(ctx, step.cos, step.sin, q.slice(2, nope, q_dim()));

        // Latent rows [kv_a_layernorm(c_kv) | rot(k_pe)], then cached.
        kv_a_layernorm.forward(ctx, cview(latent.cols(0, rank)), latent.cols(0, rank));
        View<A, B, 3> k_pe(latent.data + rank, {n, 1, rope}, {latent.stride[0], rope, 1});  // (N, 1, Dr)
        Rotary<T, B>::apply(ctx, step.cos, step.sin, k_pe);
        if (cache.int8()) {
            write_int8(ws, cview(latent), step.slots, cache, layer);
        } else {
            cache_write(ctx, cview(latent), step.slots, cache.layer(layer));
        }

        auto o = ws.template take<A>(std::array{n, heads * vdim});  // (N, H*Dv)
        if (!uses_naive(step)) {
            attend_absorbed(ctx, ws, step, cache, layer, cview(q), o);
        } else {
            attend_naive(ctx, ws, step, cache, layer, cview(q), o);
        }
        linear(ctx, cview(o), o_proj.cview(), y);
    }

private:
    // Rows [h*(Dn+Dv), h*(Dn+Dv)+Dn) of kv_b_proj: W_UK of head h, (Dn, C).
    // (A view of T, or a QuantizedView whose scales follow the rows.)
    WeightView w_uk(std::int64_t h) const { return kv_b_proj.cview().rows(h * (nope + vdim), h * (nope + vdim) + nope); }
    // The next Dv rows: W_UV of head h, (Dv, C).
    WeightView w_uv(std::int64_t h) const {
        return kv_b_proj.cview().rows(h * (nope + vdim) + nope, (h + 1) * (nope + vdim));
    }

    // The latent rows into an int8 cache (CPU only: the cache refuses int8
    // on other backends).
    void write_int8(Workspace<B>& ws, View<const A, B, 2> latent, View<const std::int64_t, B, 1> slots,
                    Cache& cache, std::int64_t layer) const {
        if constexpr (std::is_same_v<B, cpu>) {
            const LatentQ8Format& f = cache.int8_format();
            auto pages = cache.q8_layer(layer);
            const std::int64_t capacity = pages.shape[0] * pages.shape[1];
            float* row = ws.template take<float>(std::array{f.width()}).data;  // one row in f32
            for (std::int64_t i = 0; i < latent.shape[0]; ++i) {
                const std::int64_t slot = slots.data[i * slots.stride[0]];
                DSV2_CHECK(slot >= 0 && slot < capacity, RangeError, "mla: cache slot {} outside 0..{}", slot,
                           capacity - 1);
                for (std::int64_t c = 0; c < f.width(); ++c)
                    row[c] = static_cast<float>(latent.data[i * latent.stride[0] + c * latent.stride[1]]);
                quantize_latent_row(f, row, pages.data + slot * f.row_bytes());
            }
        } else {
            DSV2_FAIL(Unsupported, "mla: an int8 latent cache on a backend without its kernels");
        }
    }

    // The first s.context() rows of sequence s, dense (an int8 cache's
    // dequantized), into rows (S, C+Dr).
    void gather_rows(Context<B>& ctx, const Cache& cache, std::int64_t layer, const typename Step<A, B>::Sequence& s,
                     View<A, B, 2> rows) const {
        if (!cache.int8()) {
            cache_gather(ctx, cache.layer(layer), s.block_table, rows);
            return;
        }
        if constexpr (std::is_same_v<B, cpu>) {
            const LatentQ8Format& f = cache.int8_format();
            const auto pages = cache.q8_layer(layer);
            const std::int64_t page = pages.shape[1], len = rows.shape[0];
            DSV2_CHECK(s.block_table.shape[0] * page >= len, RangeError,
                       "mla: {} rows from a block table of {} pages of {}", len, s.block_table.shape[0], page);
#pragma omp parallel num_threads(ctx.threads) if (len >= 256)
            {
                std::vector<float> row(static_cast<std::size_t>(f.width()));
#pragma omp for
                for (std::int64_t j = 0; j < len; ++j) {
                    const std::int64_t pid = s.block_table.data[(j / page) * s.block_table.stride[0]];
                    dequantize_latent_row(f, pages.data + (pid * page + j % page) * f.row_bytes(), row.data());
                    for (std::int64_t c = 0; c < f.width(); ++c)
                        rows.data[j * rows.stride[0] + c * rows.stride[1]] = static_cast<A>(row[static_cast<std::size_t>(c)]);
                }
            }
        } else {
            DSV2_FAIL(Unsupported, "mla: an int8 latent cache on a backend without its kernels");
        }
    }

    void attend_absorbed(Context<B>& ctx, Workspace<B>& ws, const Step<A, B>& step, const Cache& cache,
                         std::int64_t layer,
                         View<const A, B, 3> q,  // (N, H, Dn+Dr)
                         View<A, B, 2> o) const  // (N, H*Dv)
    {
        const std::int64_t n = q.shape[0], w = latent_dim();
        // Absorbed query [q_nope · W_UK | q_pe]: (N, H, C+Dr).
        auto q_lat = ws.template take<A>(std::array{n, heads, w});
        auto o_lat = ws.template take<A>(std::array{n, heads, rank});  // (N, H, C)
        std::vector<Product<A, WeightView, B>> per_head;  // one group over the heads
        for (std::int64_t h = 0; h < heads; ++h) {
            per_head.push_back({head(q, h).cols(0, nope), w_uk(h), head(q_lat, h).cols(0, rank)});
            convert_rows(ctx, head(q, h).cols(nope, q_dim()), head(q_lat, h).cols(rank, w));
        }
        matmul_group(ctx, per_head);
        for (const auto& s : step.sequences) {
            const auto q_s = cview(q_lat).rows(s.row_begin, s.row_begin + s.n_tokens);
            const auto o_s = o_lat.rows(s.row_begin, s.row_begin + s.n_tokens);
            // One new token: the backend's paged decode kernel, when it has
            // one for these types, reads the cache pages in place.
            const View<const std::int32_t, B, 2> table(s.block_table.data, {1, s.block_table.shape[0]},
                                                       {s.block_table.shape[0], 1});
            const std::vector<std::int64_t> length{s.context()};
            if (s.n_tokens == 1 && cache.int8()) {
                if constexpr (requires { mla_decode_q8(ctx, q_s, cache.q8_layer(layer), table, length, softmax_scale, o_s); }) {
                    mla_decode_q8(ctx, q_s, cache.q8_layer(layer), table, length, softmax_scale, o_s);
                    continue;
                }
            } else if (s.n_tokens == 1) {
                if constexpr (requires { mla_decode(ctx, q_s, cache.layer(layer), table, length, softmax_scale, o_s); }) {
                    mla_decode(ctx, q_s, cache.layer(layer), table, length, softmax_scale, o_s);
                    continue;
                }
            }
            typename Workspace<B>::Scope scope(ws);
            auto rows = ws.template take<A>(std::array{s.context(), w});  // (S, C+Dr)
            gather_rows(ctx, cache, layer, s, rows);
            const View<const A, B, 3> keys(rows.data, {s.context(), 1, w});                    // (S, 1, C+Dr)
            const View<const A, B, 3> values(rows.data, {s.context(), 1, rank}, {w, w, 1});  // (S, 1, C)
            attention(ctx, q_s, keys, values, s.first_position, softmax_scale, o_s);
        }
        per_head.clear();
        for (std::int64_t h = 0; h < heads; ++h) {
            per_head.push_back({head(cview(o_lat), h), w_uv(h), o.cols(h * vdim, (h + 1) * vdim)});
        }
        linear_group(ctx, per_head);
    }

    void attend_naive(Context<B>& ctx, Workspace<B>& ws, const Step<A, B>& step, const Cache& cache,
                      std::int64_t layer,
                      View<const A, B, 3> q,  // (N, H, Dn+Dr)
                      View<A, B, 2> o) const  // (N, H*Dv)
    {
        const std::int64_t w = latent_dim();
        const auto o3 = o.reshape(std::array{o.shape[0], heads, vdim});  // (N, H, Dv)
        for (const auto& s : step.sequences) {
            typename Workspace<B>::Scope scope(ws);
            const std::int64_t len = s.context();
            auto rows = ws.template take<A>(std::array{len, w});  // (S, C+Dr)
            gather_rows(ctx, cache, layer, s, rows);
            // Decompress: (S, H, Dn+Dv) = [k_nope | v] per head.
            auto kv = ws.template take<A>(std::array{len, heads, nope + vdim});
            linear(ctx, cview(rows.cols(0, rank)), kv_b_proj.cview(), kv.reshape(std::array{len, heads * (nope + vdim)}));
            auto keys = ws.template take<A>(std::array{len, heads, q_dim()});  // (S, H, Dn+Dr)
            for (std::int64_t h = 0; h < heads; ++h) {
                convert_rows(ctx, head(cview(kv), h).cols(0, nope), head(keys, h).cols(0, nope));
                convert_rows(ctx, cview(rows.cols(rank, w)), head(keys, h).cols(nope, q_dim()));
            }
            attention(ctx, q.rows(s.row_begin, s.row_begin + s.n_tokens), cview(keys), cview(kv).slice(2, nope, nope + vdim),
                      s.first_position, softmax_scale, o3.rows(s.row_begin, s.row_begin + s.n_tokens));
        }
    }

    // Head h of a (N, H, X) view as an (N, X) view.
    template <class E>
    static View<E, B, 2> head(View<E, B, 3> v, std::int64_t h) {
        return {v.data + h * v.stride[1], {v.shape[0], v.shape[2]}, {v.stride[0], v.stride[2]}};
    }
};

}  // namespace dsv2
