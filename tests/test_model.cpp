// The whole model against the reference: batched prefill logits, layer by
// layer hidden states and the final norm, greedy decode step by step, and
// the cross-path properties (token-by-token == prefill, naive == absorbed).
// Every user-reachable error of Model::forward throws with a message that
// says what was wrong and leaves the cache as it was.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "step_fixture.hpp"

#include <algorithm>

using namespace dsv2;
using namespace dsv2::test;

namespace {

const std::vector<std::string> kCases = {"tiny_v2", "tiny_lite", "tiny_plain"};

// A session where every prompt can grow to max_position_embeddings, in
// pages of 8 so that the longer prompts span several.
template <class T>
Session<T, cpu> session_for(CpuCtx& ctx, const Model<T, cpu>& model, std::int64_t n_seqs) {
    return model.new_session(ctx, n_seqs * model.config.max_position_embeddings, n_seqs + 2, 8);
}

template <class T>
std::vector<std::int64_t> add_sequences(Session<T, cpu>& s, std::size_t n) {
    std::vector<std::int64_t> ids;
    for (std::size_t i = 0; i < n; ++i) ids.push_back(s.cache.add_sequence());
    return ids;
}

std::vector<SequenceTokens> batch_of(const std::vector<std::int64_t>& ids,
                                     const std::vector<std::vector<std::int32_t>>& toks) {
    std::vector<SequenceTokens> batch;
    for (std::size_t i = 0; i < ids.size(); ++i) batch.push_back({ids[i], toks[i]});
    return batch;
}

// Elements [begin, begin + count) of a flattened golden array.
std::vector<double> slice(const std::vector<double>& all, std::int64_t begin, std::int64_t count) {
    return {all.begin() + begin, all.begin() + begin + count};
}

std::int64_t argmax(const double* row, std::int64_t v) { return std::max_element(row, row + v) - row; }

// Gap between the best and second-best value of a row.
double top_gap(const double* row, std::int64_t v) {
    std::vector<double> r(row, row + v);
    std::partial_sort(r.begin(), r.begin() + 2, r.end(), std::greater<>());
    return r[0] - r[1];
}

}  // namespace

TEMPLATE_TEST_CASE("Model prefill of all prompts in one step matches the reference logits", "[model][golden]", double,
                   float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        const auto model = load_model<TestType, cpu>(ctx, c.dir);
        const auto toks = c.prompts();
        auto session = session_for(ctx, model, std::ssize(toks));
        const auto ids = add_sequences(session, toks.size());
        const auto batch = batch_of(ids, toks);
        const auto logits = model.forward(ctx, session, batch, Logits::all);
        REQUIRE(logits.shape[0] == std::ssize(c.tokens()));
        compare_view<TestType>("logits", logits, c, "logits");
        for (std::size_t i = 0; i < ids.size(); ++i) CHECK(session.cache.length(ids[i]) == std::ssize(toks[i]));
    }
}

// The model's layers driven by hand (public members, a StepFixture) so that
// every hidden state along the way is checked, not only the logits.
TEMPLATE_TEST_CASE("Embedding, every decoder layer's output and the final norm match the reference",
                   "[model][layers][golden]", double, float, bf16, f16) {
    using A = acc_t<TestType>;
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        const auto model = load_model<TestType, cpu>(ctx, c.dir);
        const auto lens = c.seq_lens();
        const std::int64_t n = std::ssize(c.tokens()), d = c.config.hidden_size;
        auto cache = LatentCache<TestType, cpu>::for_config(ctx, c.config, 256, std::ssize(lens), 8);
        std::vector<typename StepFixture<TestType>::Part> parts;
        for (auto len : lens) parts.push_back({cache.add_sequence(), len});
        StepFixture<TestType> sf(ctx, model.rotary, cache, parts);

        Tensor<std::int32_t, cpu, 1> tok({n});
        const auto t = c.tokens();
        std::copy(t.begin(), t.end(), tok.data());
        Tensor<A, cpu, 2> h({n, d});
        embedding(ctx, model.embed_tokens.cview(), tok.cview(), h.view());
        compare_view<TestType>("embed.out", h.cview(), c, "embed.out");
        Workspace<cpu> ws;
        for (std::int64_t l = 0; l < c.config.num_hidden_layers; ++l) {
            const std::string L = "layers." + std::to_string(l) + ".";
            CHECK(model.layers[static_cast<std::size_t>(l)].is_moe() == c.config.is_moe_layer(l));
            model.layers[static_cast<std::size_t>(l)].forward(ctx, ws, sf.step(), cache, l, h.view());
            compare_view<TestType>(L + "out", h.cview(), c, L + "out");
        }
        model.norm.forward(ctx, h.cview(), h.view());
        compare_view<TestType>("norm.out", h.cview(), c, "norm.out");
    }
}

// Teacher-forced: each step appends the reference's greedy token, so the
// logits stay comparable even where a 16-bit argmax would differ.
TEMPLATE_TEST_CASE("Greedy decode step by step matches the reference decode logits and token ids",
                   "[model][decode][golden]", double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        const auto model = load_model<TestType, cpu>(ctx, c.dir);
        const auto toks = c.prompts();
        const std::int64_t b = std::ssize(toks), v = c.config.vocab_size;
        const auto steps = c.meta.at("decode_steps").get<std::int64_t>();
        const auto golden = c.f64("decode.logits");  // (steps, B, V)
        const auto greedy = c.i64("greedy.ids");     // (B, steps)
        REQUIRE(std::ssize(golden) == steps * b * v);
        auto session = session_for(ctx, model, b);
        const auto ids = add_sequences(session, toks.size());

        std::int64_t agree = 0, required = 0;
        for (std::int64_t k = 0; k < steps; ++k) {
            std::vector<std::vector<std::int32_t>> feed;
            for (std::int64_t s = 0; s < b; ++s) {
                if (k == 0)
                    feed.push_back(toks[static_cast<std::size_t>(s)]);
                else
                    feed.push_back({static_cast<std::int32_t>(greedy[s * steps + k - 1])});
            }
            const auto logits = model.forward(ctx, session, batch_of(ids, feed), Logits::last);
            REQUIRE(logits.shape[0] == b);
            REQUIRE(logits.shape[1] == v);
            const auto ours = to_f64(logits);
            compare(name + "/decode.logits", DTypeTraits<TestType>::name, ours, slice(golden, k * b * v, b * v), {b, v},
                    tolerance<TestType>());
            for (std::int64_t s = 0; s < b; ++s) {
                const double* ref_row = golden.data() + (k * b + s) * v;
                const double* our_row = ours.data() + s * v;
                const std::int64_t want = greedy[s * steps + k];
                REQUIRE(argmax(ref_row, v) == want);  // the fixture's own consistency
                double row_err = 0;
                for (std::int64_t i = 0; i < v; ++i) row_err = std::max(row_err, std::abs(our_row[i] - ref_row[i]));
                const bool same = argmax(our_row, v) == want;
                agree += same;
                // f64/f32 must agree everywhere (the fixtures keep every gap
                // above argmax_min_gap); 16-bit types wherever the reference's
                // gap exceeds twice the error measured on that row.
                const bool must = std::is_same_v<acc_t<TestType>, TestType> || top_gap(ref_row, v) > 2 * row_err;
                required += must;
                INFO(fmt::format("{} step {} sequence {}: argmax {} vs {}, gap {:.3g}, row error {:.3g}", name, k, s,
                                 argmax(our_row, v), want, top_gap(ref_row, v), row_err));
                if (must) CHECK(same);
            }
            for (std::size_t i = 0; i < ids.size(); ++i) CHECK(session.cache.length(ids[i]) == std::ssize(toks[i]) + k);
        }
        fmt::print("  [{}] {}: greedy ids agree with the reference {}/{} ({} required by margin)\n",
                   DTypeTraits<TestType>::name, name, agree, steps * b, required);
    }
}

TEMPLATE_TEST_CASE("Decoding a whole prompt one token per step equals one prefill", "[model][incremental]", double,
                   float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        const auto model = load_model<TestType, cpu>(ctx, c.dir);
        const auto toks = c.prompts();
        const std::int64_t b = std::ssize(toks), v = c.config.vocab_size;

        auto whole = session_for(ctx, model, b);
        const auto prefill =
            to_f64(model.forward(ctx, whole, batch_of(add_sequences(whole, toks.size()), toks), Logits::all));

        // All unfinished sequences advance one token per step, in one batch.
        auto inc = session_for(ctx, model, b);
        const auto ids = add_sequences(inc, toks.size());
        const auto stepped = logits_token_by_token(ctx, model, inc, ids, toks);
        const std::int64_t n = std::ssize(prefill) / v;
        compare(name + "/logits token by token vs prefill", DTypeTraits<TestType>::name, stepped, prefill, {n, v},
                cached_rounding_tolerance<TestType>());
        compare(name + "/logits token by token", DTypeTraits<TestType>::name, stepped, c.f64("logits"), {n, v},
                tolerance<TestType>());
    }
}

TEMPLATE_TEST_CASE("The naive attention path gives the same model logits as the absorbed path", "[model][paths]",
                   double, float, bf16, f16) {
    CpuCtx ctx;
    for (const auto& name : kCases) {
        const Case c(name);
        auto model = load_model<TestType, cpu>(ctx, c.dir);
        const auto toks = c.prompts();
        const std::int64_t b = std::ssize(toks), v = c.config.vocab_size;
        std::vector<std::vector<double>> out;
        for (auto path : {AttentionPath::absorbed, AttentionPath::naive}) {
            model.set_attention_path(path);
            for (const auto& l : model.layers) REQUIRE(l.self_attn.path == path);
            auto session = session_for(ctx, model, b);
            out.push_back(to_f64(model.forward(ctx, session, batch_of(add_sequences(session, toks.size()), toks))));
        }
        const std::int64_t n = std::ssize(out[0]) / v;
        compare(name + "/logits naive vs absorbed", DTypeTraits<TestType>::name, out[1], out[0], {n, v},
                cached_rounding_tolerance<TestType>());
        compare(name + "/logits (naive path)", DTypeTraits<TestType>::name, out[1], c.f64("logits"), {n, v},
                tolerance<TestType>());
    }
}

TEMPLATE_TEST_CASE("A freed sequence's pages are reused without leaking its old rows", "[model][cache]", double,
                   float) {
    CpuCtx ctx;
    const Case c("tiny_v2");
    const auto model = load_model<TestType, cpu>(ctx, c.dir);
    const auto toks = c.prompts();  // lengths 19, 1, 37
    const std::int64_t v = c.config.vocab_size;
    auto session = session_for(ctx, model, std::ssize(toks));
    const auto ids = add_sequences(session, toks.size());
    const std::int64_t free_before = session.cache.free_page_count();
    // Fill sequence 0's pages with prompt 2's rows, then free it.
    model.forward(ctx, session, batch_of({ids[0]}, {toks[2]}));
    session.cache.free(ids[0]);
    CHECK(session.cache.free_page_count() == free_before);
    // Prompt 0 in recycled pages (and a recycled sequence slot) must see only itself.
    const auto again = session.cache.add_sequence();
    const auto logits = to_f64(model.forward(ctx, session, batch_of({again}, {toks[0]})));
    compare(c.name + "/logits in recycled pages", DTypeTraits<TestType>::name, logits,
            slice(c.f64("logits"), 0, std::ssize(toks[0]) * v), {std::ssize(toks[0]), v}, tolerance<TestType>());
}

TEMPLATE_TEST_CASE("Model::forward rejects bad batches with a clear message and leaves the cache unchanged",
                   "[model][errors]", double, float) {
    CpuCtx ctx;
    const Case c("tiny_v2");  // vocab 97, max_position_embeddings 64, prompts 19, 1, 37
    const auto model = load_model<TestType, cpu>(ctx, c.dir);
    const auto toks = c.prompts();
    const std::int64_t b = std::ssize(toks), v = c.config.vocab_size,
                       steps = c.meta.at("decode_steps").get<std::int64_t>();
    // Exactly 12 pages of 8: the prompts take 3 + 1 + 5 = 9, leaving 3.
    auto session = model.new_session(ctx, 8, 8, 8);
    session.cache = LatentCache<TestType, cpu>(ctx, c.config.num_hidden_layers, c.config.latent_dim(), 8, 12, 8);
    const auto ids = add_sequences(session, toks.size());
    model.forward(ctx, session, batch_of(ids, toks));
    const auto spare = session.cache.add_sequence();  // active, still empty
    REQUIRE(session.cache.free_page_count() == 3);

    // Lengths of every slot, -1 for an inactive one.
    auto lengths = [&] {
        std::vector<std::int64_t> out;
        for (std::int64_t id = 0; id < session.cache.max_sequences(); ++id)
            out.push_back(session.cache.active(id) ? session.cache.length(id) : -1);
        return out;
    };
    auto lengths_before = lengths();
    auto free_before = session.cache.free_page_count();
    auto unchanged = [&] {
        CHECK(lengths() == lengths_before);
        CHECK(session.cache.free_page_count() == free_before);
    };
    auto fails = [&](std::vector<SequenceTokens> batch, const std::string& message) {
        INFO("expected message containing: " << message);
        REQUIRE_THROWS_WITH(model.forward(ctx, session, batch, Logits::last), Catch::Contains(message));
        REQUIRE_THROWS_AS(model.forward(ctx, session, batch, Logits::last), RangeError);
        unchanged();
    };
    const std::vector<std::int32_t> one{5}, bad_high{5, static_cast<std::int32_t>(v)}, bad_low{-1}, empty;
    const std::vector<std::int32_t> too_long(64 - 37 + 1, 3), fits_but_3_pages(17, 3), one_more_page(13, 3);

    fails({}, "the batch has no sequences");
    fails({{ids[0], one}, {ids[1], bad_high}}, "token 1: id 97 outside the vocabulary [0, 97)");
    fails({{ids[0], bad_low}}, "id -1 outside the vocabulary");
    fails({{spare, empty}}, "empty prompt");
    fails({{ids[2], too_long}}, "would reach 65 tokens, past max_position_embeddings 64");
    // Either part alone fits in the 3 free pages; together they need 4.
    fails({{ids[0], one_more_page}, {spare, fits_but_3_pages}}, "needs 4 more cache pages, 3 of 12 are free");
    fails({{ids[0], one}, {ids[1], one}, {ids[0], one}}, "sequence 0 appears twice");
    fails({{ids[0], one}, {7, one}}, "sequence 7 is not active");
    fails({{99, one}}, "sequence 99 is not active");
    session.cache.free(spare);
    lengths_before = lengths();
    fails({{spare, one}}, "is not active");

    // The cache still holds exactly the prompts: the next decode step is right.
    const auto greedy = c.i64("greedy.ids");
    std::vector<std::vector<std::int32_t>> next;
    for (std::int64_t s = 0; s < b; ++s) next.push_back({static_cast<std::int32_t>(greedy[s * steps])});
    const auto logits = to_f64(model.forward(ctx, session, batch_of(ids, next), Logits::last));
    compare(c.name + "/decode.logits after rejected batches", DTypeTraits<TestType>::name, logits,
            slice(c.f64("decode.logits"), b * v, b * v), {b, v}, tolerance<TestType>());

    // The position limit is inclusive: sequence 2 (now 38 tokens) may grow
    // to exactly 64, using the 3 free pages, and not one token further.
    REQUIRE(session.cache.length(ids[2]) == 38);
    const std::vector<std::int32_t> to_limit(64 - 38, 3);
    CHECK_NOTHROW(model.forward(ctx, session, std::vector<SequenceTokens>{{ids[2], to_limit}}));
    CHECK(session.cache.length(ids[2]) == 64);
    CHECK(session.cache.free_page_count() == 0);
    lengths_before = lengths();
    free_before = 0;
    fails({{ids[2], one}}, "would reach 65 tokens, past max_position_embeddings 64");
}
