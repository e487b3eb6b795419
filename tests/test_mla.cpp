// MLA against the f64 reference on every tiny case and layer, in both
// attention paths, plus the cross-path properties: absorbed == naive,
// incremental (token by token, chunked, sequences interleaved) == prefill,
// and cache pages outside the written slots stay untouched.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "step_fixture.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <set>

using namespace dsv2;
using namespace dsv2::test;

namespace {

const std::vector<std::string> kCases = {"tiny_v2", "tiny_lite", "tiny_plain"};

const char* path_name(AttentionPath p) { return p == AttentionPath::absorbed ? "absorbed" : "naive"; }

template <class T>
MLA<T, cpu> load_mla(CpuCtx& ctx, const Case& c, std::int64_t layer, AttentionPath path) {
    MLA<T, cpu> mla(c.config);
    load_component(ctx, mla, c, "model.layers." + std::to_string(layer) + ".self_attn.");
    mla.path = path;
    return mla;
}

// A one-layer cache big enough for the case's prompts at this page size,
// every value NaN so that a read of an unwritten row poisons the output.
template <class T>
LatentCache<T, cpu> poisoned_cache(CpuCtx& ctx, const Case& c, std::int64_t page_size) {
    const auto lens = c.seq_lens();
    std::int64_t pages = 0;
    for (auto len : lens) pages += (len + page_size - 1) / page_size;
    LatentCache<T, cpu> cache(ctx, 1, c.config.latent_dim(), page_size, pages + 1, std::ssize(lens));
    auto all = cache.layer(0);
    for (std::int64_t i = 0; i < all.numel(); ++i) all.data[i] = convert<T>(std::numeric_limits<double>::quiet_NaN());
    for (std::size_t s = 0; s < lens.size(); ++s) REQUIRE(cache.add_sequence() == static_cast<std::int64_t>(s));
    return cache;
}

// The cached rows of every sequence, concatenated in sequence order: (N, C+Dr).
template <class T>
std::vector<double> read_latents(CpuCtx& ctx, const LatentCache<T, cpu>& cache, std::int64_t n_seqs) {
    std::vector<double> out;
    for (std::int64_t s = 0; s < n_seqs; ++s) {
        Tensor<acc_t<T>, cpu, 2> rows({cache.length(s), cache.width()});
        cache_gather(ctx, cache.layer(0), cache.block_table(s), rows.view());
        const auto v = to_f64(rows.cview());
        out.insert(out.end(), v.begin(), v.end());
    }
    return out;
}

// Every cache row not holding a token must still be NaN: nothing wrote
// outside its slots.
template <class T>
void check_untouched(const LatentCache<T, cpu>& cache, std::int64_t n_seqs) {
    std::set<std::int64_t> written;
    for (std::int64_t s = 0; s < n_seqs; ++s)
        for (std::int64_t p = 0; p < cache.length(s); ++p) written.insert(cache.slot(s, p));
    const auto pages = cache.layer(0);
    std::int64_t stray = 0;
    for (std::int64_t slot = 0; slot < pages.shape[0] * pages.shape[1]; ++slot) {
        if (written.count(slot)) continue;
        for (std::int64_t j = 0; j < cache.width(); ++j)
            if (!std::isnan(convert<double>(pages.data[slot * cache.width() + j]))) ++stray;
    }
    CHECK(stray == 0);
}

struct LayerRun {
    std::vector<double> out;     // (N, D)
    std::vector<double> latent;  // (N, C+Dr)
};

// All prompts of the case in one step, one cache sequence per prompt.
template <class T>
LayerRun prefill(CpuCtx& ctx, const Case& c, const MLA<T, cpu>& mla, std::int64_t layer, std::int64_t page_size) {
    using A = acc_t<T>;
    const auto lens = c.seq_lens();
    const std::int64_t d = c.config.hidden_size;
    auto cache = poisoned_cache<T>(ctx, c, page_size);
    Rotary<T, cpu> rotary(ctx, c.config);
    std::vector<typename StepFixture<T>::Part> parts;
    for (std::size_t s = 0; s < lens.size(); ++s) parts.push_back({static_cast<std::int64_t>(s), lens[s]});
    StepFixture<T> sf(ctx, rotary, cache, parts);
    const std::string L = "layers." + std::to_string(layer) + ".";
    auto x = make_tensor<A, 2>(c.f64(L + "attn_in"), {sf.n_tokens(), d});
    auto y = make_tensor<A, 2>(
        std::vector<double>(static_cast<std::size_t>(sf.n_tokens() * d), std::numeric_limits<double>::quiet_NaN()),
        {sf.n_tokens(), d});
    Workspace<cpu> ws;
    mla.forward(ctx, ws, sf.step(), cache, 0, x.cview(), y.view());
    check_untouched(cache, std::ssize(lens));
    return {to_f64(y.cview()), read_latents(ctx, cache, std::ssize(lens))};
}

// The same prompts fed in chunks (run_in_chunks: sequences interleave in
// the batch and in the page pool).
template <class T>
LayerRun incremental(CpuCtx& ctx, const Case& c, const MLA<T, cpu>& mla, std::int64_t layer, std::int64_t page_size,
                     const std::vector<std::int64_t>& chunks) {
    const auto lens = c.seq_lens();
    const std::int64_t n_seqs = std::ssize(lens);
    const auto x_all = c.f64("layers." + std::to_string(layer) + ".attn_in");
    auto cache = poisoned_cache<T>(ctx, c, page_size);
    Rotary<T, cpu> rotary(ctx, c.config);
    const auto out = run_in_chunks(ctx, rotary, cache, x_all, c.config.hidden_size, lens, chunks,
                                   [&](auto& ws, const auto& step, auto x, auto y) {
                                       mla.forward(ctx, ws, step, cache, 0, x, y);
                                   });
    check_untouched(cache, n_seqs);
    return {out, read_latents(ctx, cache, n_seqs)};
}

template <class T>
void compare_paths(const std::string& name, const std::vector<double>& actual, const std::vector<double>& expected,
                   std::int64_t width, Tolerance tol) {
    compare(name, DTypeTraits<T>::name, actual, expected, {static_cast<std::int64_t>(actual.size()) / width, width},
            tol);
}

}  // namespace

TEMPLATE_TEST_CASE("MLA output and cached latent rows match the reference on every tiny case and layer, both paths",
                   "[mla][golden]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        for (std::int64_t layer = 0; layer < c.config.num_hidden_layers; ++layer) {
            const std::string L = "layers." + std::to_string(layer) + ".";
            for (auto path : {AttentionPath::absorbed, AttentionPath::naive}) {
                const auto mla = load_mla<TestType>(ctx, c, layer, path);
                // Page size 4 splits every prompt longer than 4 over several pages.
                const auto run = prefill(ctx, c, mla, layer, 4);
                const std::string tag = std::string("[") + path_name(path) + "]";
                compare(name + "/" + L + "attn_out" + tag, DTypeTraits<TestType>::name, run.out, c.f64(L + "attn_out"),
                        c.shape(L + "attn_out"), tolerance<TestType>());
                compare(name + "/" + L + "attn.latent" + tag, DTypeTraits<TestType>::name, run.latent,
                        c.f64(L + "attn.latent"), c.shape(L + "attn.latent"), tolerance<TestType>());
            }
        }
    }
}

TEMPLATE_TEST_CASE("MLA absorbed path equals the naive path to rounding", "[mla][paths]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        for (std::int64_t layer = 0; layer < c.config.num_hidden_layers; ++layer) {
            const auto absorbed = prefill(ctx, c, load_mla<TestType>(ctx, c, layer, AttentionPath::absorbed), layer, 4);
            const auto naive = prefill(ctx, c, load_mla<TestType>(ctx, c, layer, AttentionPath::naive), layer, 4);
            const std::string L = name + "/layers." + std::to_string(layer) + ".";
            compare_paths<TestType>(L + "attn_out absorbed vs naive", absorbed.out, naive.out, c.config.hidden_size,
                                    rounding_tolerance<TestType>());
            // The cache is written before either path attends: identical bits.
            CHECK(absorbed.latent == naive.latent);
        }
    }
}

TEMPLATE_TEST_CASE("MLA fed token by token or in chunks, sequences interleaved, equals one prefill",
                   "[mla][incremental]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        for (std::int64_t layer = 0; layer < c.config.num_hidden_layers; ++layer) {
            for (auto path : {AttentionPath::absorbed, AttentionPath::naive}) {
                const auto mla = load_mla<TestType>(ctx, c, layer, path);
                const auto whole = prefill(ctx, c, mla, layer, 4);
                // Page size 3 against 4: paging must not change anything either.
                const std::vector<std::vector<std::int64_t>> schedules = {{1}, {3, 1, 5, 2}};
                for (const auto& chunks : schedules) {
                    const auto inc = incremental(ctx, c, mla, layer, 3, chunks);
                    INFO(fmt::format("{} path, chunks {}", path_name(path), fmt::join(chunks, ",")));
                    const std::string L = name + "/layers." + std::to_string(layer) + ".";
                    // Latent rows come from products of other shapes here, so
                    // a 16-bit cache may hold a value one storage ulp apart.
                    compare_paths<TestType>(L + "attn_out incremental vs prefill", inc.out, whole.out,
                                            c.config.hidden_size, cached_rounding_tolerance<TestType>());
                    compare_paths<TestType>(L + "latent incremental vs prefill", inc.latent, whole.latent,
                                            c.config.latent_dim(), cached_rounding_tolerance<TestType>());
                    // And against the reference itself, so both cannot be wrong together.
                    compare(L + "attn_out incremental", DTypeTraits<TestType>::name, inc.out,
                            c.f64("layers." + std::to_string(layer) + ".attn_out"),
                            c.shape("layers." + std::to_string(layer) + ".attn_out"), tolerance<TestType>());
                }
            }
        }
    }
}

TEST_CASE("the automatic attention path: naive for prefill, absorbed for decode, by multiply-adds", "[mla][paths]") {
    MLA<float, cpu> mla(Config::deepseek_v2_lite());
    using Seq = Step<float, cpu>::Sequence;
    auto step_of = [](std::vector<Seq> seqs) {
        Step<float, cpu> step;
        step.sequences = std::move(seqs);
        return step;
    };
    // C = 512, Dn = Dv = 128: naive iff n·S·768 >= (S - n)·512·256, i.e. n·S >= 170.7·(S - n).
    REQUIRE(mla.path == AttentionPath::automatic);
    CHECK(mla.uses_naive(step_of({Seq{0, 0, 512, 0, {}}})));           // prefill from empty
    CHECK(mla.uses_naive(step_of({Seq{0, 0, 1, 0, {}}})));             // a one-token prompt: equal cost
    CHECK_FALSE(mla.uses_naive(step_of({Seq{0, 0, 1, 4095, {}}})));    // decode
    CHECK_FALSE(mla.uses_naive(step_of({Seq{0, 0, 150, 4000, {}}})));  // 150·4150 < 170.7·4000
    CHECK(mla.uses_naive(step_of({Seq{0, 0, 200, 4000, {}}})));        // 200·4200 >= 170.7·4000
    // A step goes naive only if every sequence does.
    CHECK_FALSE(mla.uses_naive(step_of({Seq{0, 0, 512, 0, {}}, Seq{1, 512, 1, 4095, {}}})));
    mla.path = AttentionPath::absorbed;
    CHECK_FALSE(mla.uses_naive(step_of({Seq{0, 0, 512, 0, {}}})));
    mla.path = AttentionPath::naive;
    CHECK(mla.uses_naive(step_of({Seq{0, 0, 1, 4095, {}}})));
}

// V2-Lite's attention shape (16 heads, rank 512 + 64) in a two-layer bf16
// model with random weights, decoding token by token over its bf16 cache:
// through bf16 dot products (q and P rounded to bf16; AVX512_BF16 CPUs)
// against exact f32 products over the same rows.
TEST_CASE("a V2-Lite-shaped bf16 model decodes through bf16 dot products near the exact products",
          "[mla][model]") {
    const auto cfg = dsv2::test::v2_lite_attention_config();
    CpuCtx ctx(2);
    Model<bf16, cpu> model(ctx, cfg);
    init_random(ctx, model, 5);
    std::vector<std::vector<std::int32_t>> toks(2);
    std::mt19937 rng(3);
    for (auto& t : toks)
        for (int i = 0; i < 60; ++i) t.push_back(static_cast<std::int32_t>(rng() % cfg.vocab_size));
    toks[1].resize(37);
    const auto decode = [&](Bf16CacheProducts products) {
        ctx.bf16_cache_products = products;
        auto session = model.new_session(ctx, 2 * cfg.max_position_embeddings, 3, 16);
        const std::vector<std::int64_t> ids{session.cache.add_sequence(), session.cache.add_sequence()};
        auto logits = logits_token_by_token(ctx, model, session, ids, toks);
        ctx.bf16_cache_products = Bf16CacheProducts::fastest;
        return logits;
    };
    const auto exact = decode(Bf16CacheProducts::exact), dot = decode(Bf16CacheProducts::bf16_dot);
    double err = 0, scale = 0;
    for (std::size_t i = 0; i < exact.size(); ++i) {
        REQUIRE(std::isfinite(dot[i]));
        err = std::max(err, std::abs(dot[i] - exact[i]));
        scale = std::max(scale, std::abs(exact[i]));
    }
    INFO("max |logit difference|, bf16 dot products vs exact: " << err << ", max |logit| " << scale);
#if DSV2_X86_KERNELS
    // The rounding is visible where the dot kernel runs: it did run.
    CpuCtx forced(2);
    forced.bf16_cache_products = Bf16CacheProducts::bf16_dot;
    if (cpu_detail::use_bf16_dot(forced, cfg.latent_dim(), cfg.kv_lora_rank)) REQUIRE(err > 0);
#endif
    // Measured 2026-11-30 (Zen 5): see docs/usage.md, "bf16 latent cache".
    REQUIRE(err <= 0.01 * scale);
}
