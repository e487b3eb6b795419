// Attention variants behind the Attention seam (issue 7): GQA-family
// attention (MHA, GQA, MQA) against the f64 reference (tests/data/variants,
// from tests/reference/variants_reference.py) layer by layer and as whole
// models (prefill logits, cached decode), the identities that must hold
// (GQA and MQA equal an MHA whose K/V heads are replicated; the run-time
// selected MLA model equals the reference, absorbed and naive), the K/V
// cache's byte accounting against the paper's Table 1, and a user-defined
// attention type plugged in without editing the library.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "step_fixture.hpp"

#include <limits>
#include <set>

using namespace dsv2;
using namespace dsv2::test;

namespace {

const std::vector<std::string> kGqaCases = {"variants/mha", "variants/gqa", "variants/mqa"};

template <class T>
GQA<T, cpu> load_gqa(CpuCtx& ctx, const Case& c, std::int64_t layer) {
    GQA<T, cpu> attn(c.config);
    load_component(ctx, attn, c, "model.layers." + std::to_string(layer) + ".self_attn.");
    return attn;
}

// A one-layer K/V cache for the case's prompts, every value NaN so that a
// read of an unwritten row would poison the output.
template <class T>
KVCache<T, cpu> poisoned_cache(CpuCtx& ctx, const GQA<T, cpu>& attn, std::int64_t n_seqs, std::int64_t page_size,
                               std::int64_t pages) {
    KVCache<T, cpu> cache(ctx, 1, attn.kv_heads, attn.k_dim(), attn.vdim, page_size, pages, n_seqs);
    auto all = cache.layer(0);
    for (std::int64_t i = 0; i < all.numel(); ++i) all.data[i] = convert<T>(std::numeric_limits<double>::quiet_NaN());
    for (std::int64_t s = 0; s < n_seqs; ++s) REQUIRE(cache.add_sequence() == s);
    return cache;
}

struct LayerRun {
    std::vector<double> out;  // (N, D)
    std::vector<double> kv;   // (N, Hk*(Dk+Dv)) cached rows, sequence order
};

// Feeds the case's attention input of `layer` in steps: at each step every
// unfinished sequence gets its next chunk (sizes cycling through `chunks`;
// a chunk larger than every prompt is one prefill).
template <class T>
LayerRun run_layer(CpuCtx& ctx, const Case& c, const GQA<T, cpu>& attn, std::int64_t layer, std::int64_t page_size,
                   const std::vector<std::int64_t>& chunks) {
    using A = acc_t<T>;
    const auto lens = c.seq_lens();
    const std::int64_t n_seqs = std::ssize(lens);
    const auto x_all = c.f64("layers." + std::to_string(layer) + ".attn_in");
    std::int64_t pages = 1;
    for (auto len : lens) pages += (len + page_size - 1) / page_size;
    auto cache = poisoned_cache<T>(ctx, attn, n_seqs, page_size, pages);
    Rotary<T, cpu> rotary(ctx, c.config);
    const auto out = run_in_chunks(ctx, rotary, cache, x_all, c.config.hidden_size, lens, chunks,
                                   [&](auto& ws, const auto& step, auto x, auto y) {
                                       attn.forward(ctx, ws, step, cache, 0, x, y);
                                   });
    LayerRun r{out, {}};
    for (std::int64_t s = 0; s < n_seqs; ++s) {
        Tensor<A, cpu, 2> rows({cache.length(s), cache.width()});
        cache_gather(ctx, cview(cache.layer(0)), cache.block_table(s), rows.view());
        const auto v = to_f64(rows.cview());
        r.kv.insert(r.kv.end(), v.begin(), v.end());
    }
    // Nothing was written outside the sequences' slots.
    std::set<std::int64_t> written;
    for (std::int64_t s = 0; s < n_seqs; ++s)
        for (std::int64_t p = 0; p < cache.length(s); ++p) written.insert(cache.slot(s, p));
    const auto pg = cache.layer(0);
    std::int64_t stray = 0;
    for (std::int64_t slot = 0; slot < pg.shape[0] * pg.shape[1]; ++slot)
        if (!written.count(slot))
            for (std::int64_t j = 0; j < cache.width(); ++j)
                if (!std::isnan(convert<double>(pg.data[slot * cache.width() + j]))) ++stray;
    CHECK(stray == 0);
    return r;
}

const std::vector<std::int64_t> kPrefill = {1 << 20};

// An MHA whose K/V heads are the GQA heads repeated for each query head of
// their group: attention over it must equal the GQA attention.
template <class T>
GQA<T, cpu> replicated_mha(CpuCtx& ctx, const GQA<T, cpu>& g, const Config& cfg) {
    Config mcfg = cfg;
    mcfg.num_key_value_heads = cfg.num_attention_heads;
    GQA<T, cpu> m(mcfg);
    const std::int64_t group = g.heads / g.kv_heads, dk = g.k_dim(), dv = g.vdim, d = cfg.hidden_size;
    auto copy_rows = [&](const Tensor<T, cpu, 2>& src, Tensor<T, cpu, 2>& dst, std::int64_t width) {
        for (std::int64_t h = 0; h < g.heads; ++h)
            std::copy_n(src.data() + (h / group) * width * d, width * d, dst.data() + h * width * d);
    };
    copy_rows(g.k_proj, m.k_proj, dk);
    copy_rows(g.v_proj, m.v_proj, dv);
    std::copy_n(g.q_proj.data(), g.q_proj.numel(), m.q_proj.data());
    std::copy_n(g.o_proj.data(), g.o_proj.numel(), m.o_proj.data());
    (void)ctx;
    return m;
}

// A user-defined attention, written outside the library: it wraps GQA and
// counts its calls. It only has to satisfy dsv2::Attention.
template <class T, class B>
struct CountingAttention {
    using Cache = KVCache<T, B>;
    GQA<T, B> inner;
    mutable std::int64_t calls = 0;

    explicit CountingAttention(const Config& cfg) : inner(cfg) {}
    template <class F>
    void for_each_weight(F&& f) {
        inner.for_each_weight(f);
    }
    void forward(Context<B>& ctx, Workspace<B>& ws, const Step<acc_t<T>, B>& step, Cache& cache, std::int64_t layer,
                 View<const acc_t<T>, B, 2> x, View<acc_t<T>, B, 2> y) const {
        ++calls;
        inner.forward(ctx, ws, step, cache, layer, x, y);
    }
};
static_assert(Attention<CountingAttention<float, cpu>, float, cpu>);
static_assert(Attention<MLA<bf16, cpu>, bf16, cpu>);
static_assert(Attention<GQA<f16, cpu>, f16, cpu>);
static_assert(!Attention<MLP<float, cpu>, float, cpu>);

}  // namespace

TEMPLATE_TEST_CASE("MHA, GQA and MQA attention and cached K/V rows match the reference on every layer",
                   "[variants][attention][golden]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kGqaCases) {
        const Case c(name);
        for (std::int64_t layer = 0; layer < c.config.num_hidden_layers; ++layer) {
            const std::string L = "layers." + std::to_string(layer) + ".";
            const auto attn = load_gqa<TestType>(ctx, c, layer);
            // Page size 4 splits every prompt longer than 4 over several pages.
            const auto run = run_layer<TestType>(ctx, c, attn, layer, 4, kPrefill);
            compare(name + "/" + L + "attn_out", DTypeTraits<TestType>::name, run.out, c.f64(L + "attn_out"),
                    c.shape(L + "attn_out"), tolerance<TestType>());
            if (layer == 0)
                compare(name + "/" + L + "attn.kv", DTypeTraits<TestType>::name, run.kv, c.f64(L + "attn.kv"),
                        c.shape(L + "attn.kv"), tolerance<TestType>());
        }
    }
}

TEMPLATE_TEST_CASE("GQA-family attention fed token by token or in chunks equals one prefill",
                   "[variants][attention][incremental]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kGqaCases) {
        const Case c(name);
        const auto attn = load_gqa<TestType>(ctx, c, 0);
        const auto whole = run_layer<TestType>(ctx, c, attn, 0, 4, kPrefill);
        for (const auto& chunks : std::vector<std::vector<std::int64_t>>{{1}, {3, 1, 5, 2}}) {
            const auto inc = run_layer<TestType>(ctx, c, attn, 0, 3, chunks);
            INFO(fmt::format("{} chunks {}", name, fmt::join(chunks, ",")));
            compare(name + "/attn_out incremental vs prefill", DTypeTraits<TestType>::name, inc.out, whole.out,
                    c.shape("layers.0.attn_out"), cached_rounding_tolerance<TestType>());
            compare(name + "/attn_out incremental", DTypeTraits<TestType>::name, inc.out, c.f64("layers.0.attn_out"),
                    c.shape("layers.0.attn_out"), tolerance<TestType>());
        }
    }
}

TEMPLATE_TEST_CASE("GQA with Hk = H is MHA; GQA and MQA equal MHA with each K/V head replicated over its group",
                   "[variants][attention][identity]", double, float) {
    CpuCtx ctx;
    for (const auto& name : kGqaCases) {
        const Case c(name);
        const auto g = load_gqa<TestType>(ctx, c, 0);
        const auto m = replicated_mha(ctx, g, c.config);
        REQUIRE(m.kv_heads == m.heads);
        const auto a = run_layer<TestType>(ctx, c, g, 0, 4, kPrefill);
        const auto b = run_layer<TestType>(ctx, c, m, 0, 4, kPrefill);
        compare(name + "/GQA vs replicated MHA", DTypeTraits<TestType>::name, a.out, b.out, c.shape("layers.0.attn_out"),
                rounding_tolerance<TestType>());
        if (g.kv_heads == g.heads) CHECK(a.out == b.out);  // the same weights: bit-identical
    }
    // MQA is GQA with one KV head: the run-time selection builds exactly that.
    const Case mqa("variants/mqa");
    const Config as_mqa = attention_variant_config(mqa.config, AttentionKind::mqa);
    const Config as_gqa1 = attention_variant_config(mqa.config, AttentionKind::gqa, 1);
    CHECK(as_mqa.num_key_value_heads == 1);
    CHECK(as_gqa1.num_key_value_heads == 1);
    CHECK(attention_variant_config(mqa.config, AttentionKind::mha).num_key_value_heads == mqa.config.num_attention_heads);
}

TEMPLATE_TEST_CASE("Models with MHA, GQA and MQA attention match the reference prefill and decode logits",
                   "[variants][model][golden]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kGqaCases) {
        const Case c(name);
        Model<TestType, cpu, GQA<TestType, cpu>> model(ctx, c.config);
        load_weights(ctx, model, c.checkpoint());
        const auto toks = c.prompts();
        const std::int64_t b = std::ssize(toks), v = c.config.vocab_size;
        auto session = model.new_session(ctx, b * c.config.max_position_embeddings, b, 4);
        std::vector<std::int64_t> ids;
        std::vector<SequenceTokens> batch;
        for (std::int64_t i = 0; i < b; ++i) {
            ids.push_back(session.cache.add_sequence());
            batch.push_back({ids.back(), toks[static_cast<std::size_t>(i)]});
        }
        const auto logits = model.forward(ctx, session, batch, Logits::all);
        compare_view<TestType>("logits", logits, c, "logits");
        // Teacher-forced decode: step k appends the reference's k-th greedy token.
        const auto greedy = c.i64("greedy.ids");
        const auto dec = c.f64("decode.logits");
        const std::int64_t steps = c.meta.at("decode_steps").get<std::int64_t>();
        std::vector<double> last(static_cast<std::size_t>(b * v));
        std::vector<std::int32_t> next(static_cast<std::size_t>(b));
        for (std::int64_t k = 0; k < steps; ++k) {
            if (k == 0) {
                // The prompts' last rows of the prefill above.
                std::int64_t row = -1;
                for (std::int64_t i = 0; i < b; ++i) {
                    row += std::ssize(toks[static_cast<std::size_t>(i)]);
                    for (std::int64_t j = 0; j < v; ++j) last[static_cast<std::size_t>(i * v + j)] = convert<double>(logits(row, j));
                }
            } else {
                std::vector<SequenceTokens> step;
                for (std::int64_t i = 0; i < b; ++i) {
                    next[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(greedy[static_cast<std::size_t>(i * steps + k - 1)]);
                    step.push_back({ids[static_cast<std::size_t>(i)], std::span(&next[static_cast<std::size_t>(i)], 1)});
                }
                const auto out = model.forward(ctx, session, step, Logits::last);
                for (std::int64_t i = 0; i < b; ++i)
                    for (std::int64_t j = 0; j < v; ++j) last[static_cast<std::size_t>(i * v + j)] = convert<double>(out(i, j));
            }
            compare(c.name + "/decode.logits[" + std::to_string(k) + "]", DTypeTraits<TestType>::name, last,
                    std::vector<double>(dec.begin() + k * b * v, dec.begin() + (k + 1) * b * v), {b, v},
                    tolerance<TestType>());
        }
    }
}

TEST_CASE("Greedy generation of a GQA-family model reproduces the reference token ids", "[variants][model][generate]") {
    CpuCtx ctx;
    for (const auto& name : kGqaCases) {
        const Case c(name);
        // Run-time selection, as a tool would do it: the kind from a study
        // config, the weights from the checkpoint.
        const auto kind = attention_kind_from_string(name.substr(name.find('/') + 1));
        auto any = make_model<double, cpu>(ctx, c.config, kind);
        std::visit(
            [&](auto& model) {
                load_weights(ctx, model, c.checkpoint());
                auto session = model.new_session(ctx, 3 * c.config.max_position_embeddings, 3, 4);
                GenerateOptions opt;
                opt.max_new_tokens = c.meta.at("decode_steps").get<std::int64_t>();
                const auto r = generate(ctx, model, session, c.prompts(), opt);
                const auto greedy = c.i64("greedy.ids");
                std::vector<std::int64_t> got;
                for (const auto& t : r.tokens) got.insert(got.end(), t.begin(), t.end());
                CHECK(got == greedy);
                CHECK(session.cache.bytes_in_use() == 0);  // generate frees its sequences
            },
            any);
        CHECK(any.index() == 1);
    }
}

TEST_CASE("The MLA model chosen at run time matches the reference, absorbed and naive",
          "[variants][model][mla][golden]") {
    CpuCtx ctx;
    const Case c("tiny_v2");
    auto any = make_model<double, cpu>(ctx, c.config, AttentionKind::mla);
    REQUIRE(any.index() == 0);
    auto& model = std::get<0>(any);
    load_weights(ctx, model, c.checkpoint());
    const auto toks = c.prompts();
    for (auto path : {AttentionPath::absorbed, AttentionPath::naive}) {
        model.set_attention_path(path);
        auto session = model.new_session(ctx, 256, 4, 8);
        std::vector<SequenceTokens> batch;
        for (const auto& t : toks) batch.push_back({session.cache.add_sequence(), t});
        const auto logits = model.forward(ctx, session, batch, Logits::all);
        compare_view<double>(std::string("logits ") + (path == AttentionPath::absorbed ? "absorbed" : "naive"), logits,
                             c, "logits");
    }
}

TEST_CASE("K/V cache bytes per token follow the paper's Table 1 for MHA, GQA, MQA and MLA", "[variants][cache]") {
    CpuCtx ctx;
    // DeepSeek-V2's shape with d_h = Dk = Dv = 128 for the classic attentions
    // (rope on half of each head), so Table 1's formulas apply exactly.
    Config v2 = Config::deepseek_v2();
    Config classic = v2;
    classic.qk_nope_head_dim = 64;
    classic.qk_rope_head_dim = 64;
    const std::int64_t l = v2.num_hidden_layers, nh = v2.num_attention_heads, dh = 128;
    const auto table = kv_cache_values_per_token(classic, 8);
    auto bytes = [&](AttentionKind kind, std::int64_t groups) {
        const Config cfg = attention_variant_config(kind == AttentionKind::mla ? v2 : classic, kind, groups);
        if (kind == AttentionKind::mla) return LatentCache<bf16, cpu>::for_config(ctx, cfg, 1, 1, 1).bytes_per_token();
        return KVCache<bf16, cpu>::for_config(ctx, cfg, 1, 1, 1).bytes_per_token();
    };
    CHECK(bytes(AttentionKind::mha, 0) == 2 * nh * dh * l * 2);
    CHECK(bytes(AttentionKind::mha, 0) == table.mha * 2);
    CHECK(bytes(AttentionKind::gqa, 8) == 2 * 8 * dh * l * 2);
    CHECK(bytes(AttentionKind::gqa, 8) == table.gqa * 2);
    CHECK(bytes(AttentionKind::mqa, 0) == 2 * dh * l * 2);
    CHECK(bytes(AttentionKind::mqa, 0) == table.mqa * 2);
    CHECK(bytes(AttentionKind::mla, 0) == (512 + 64) * l * 2);  // 69,120
    CHECK(bytes(AttentionKind::mla, 0) == 69120);

    // bytes_in_use counts whole pages of the K/V row width.
    KVCache<float, cpu> cache(ctx, 3, 2, 8, 6, 4, 10, 2);
    CHECK(cache.width() == 2 * (8 + 6));
    CHECK(cache.v_offset() == 16);
    const auto s = cache.add_sequence();
    cache.append(s, 5);  // two pages
    CHECK(cache.bytes_in_use() == 2 * 4 * 3 * 28 * 4);
    cache.free(s);
    CHECK(cache.bytes_in_use() == 0);
}

TEST_CASE("Attention variant configs reject head counts that do not divide", "[variants][errors]") {
    CpuCtx ctx;
    Config cfg = Case("variants/gqa").config;
    CHECK_THROWS_WITH(attention_variant_config(cfg, AttentionKind::gqa, 3),
                      Catch::Contains("num_key_value_heads 3 must divide num_attention_heads 4"));
    cfg.num_key_value_heads = 3;
    using Gqa = GQA<float, cpu>;
    CHECK_THROWS_WITH(Gqa(cfg), Catch::Contains("num_key_value_heads 3: expected a divisor"));
    CHECK_THROWS_WITH(attention_kind_from_string("mlx"), Catch::Contains("expected one of mla, mha, gqa, mqa"));
    CHECK_THROWS_WITH(attention_kind_from_json(nlohmann::json{{"attention_type", 3}}),
                      Catch::Contains("field 'attention_type': expected a string"));
    using Cache = KVCache<float, cpu>;
    CHECK_THROWS_WITH(Cache::for_config(ctx, cfg, std::int64_t{1} << 41), Catch::Contains("max_tokens must be 0..2^40"));
}

TEST_CASE("A study config names its attention; a DeepSeek-V2 config reads as MLA", "[variants][config]") {
    for (const std::string name : {"mha", "gqa", "mqa"}) {
        std::ifstream in(data_dir() / "variants" / name / "config.json");
        const auto j = nlohmann::json::parse(in);
        CHECK(attention_kind_from_json(j) == attention_kind_from_string(name));
    }
    std::ifstream in(data_dir() / "tiny_v2" / "config.json");
    CHECK(attention_kind_from_json(nlohmann::json::parse(in)) == AttentionKind::mla);
}

TEST_CASE("A user-defined attention type runs in DecoderLayer and Model without library edits", "[variants][seam]") {
    CpuCtx ctx;
    const Case c("variants/gqa");
    Model<double, cpu, CountingAttention<double, cpu>> custom(ctx, c.config);
    load_weights(ctx, custom, c.checkpoint());
    auto session = custom.new_session(ctx, 64, 3, 4);
    std::vector<SequenceTokens> batch;
    const auto toks = c.prompts();
    for (const auto& t : toks) batch.push_back({session.cache.add_sequence(), t});
    const auto logits = custom.forward(ctx, session, batch, Logits::all);
    compare_view<double>("logits (custom attention)", logits, c, "logits");
    for (const auto& l : custom.layers) CHECK(l.self_attn.calls == 1);
}
