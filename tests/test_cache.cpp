// LatentCache: paging bookkeeping (slots, block tables, page reuse,
// accounting), every RangeError, and the cache inside the full model: many
// small pages == one page per sequence == the f64 reference, with every page
// poisoned with NaN beforehand so that a read of a row the sequence does not
// own shows up in the logits.
#include <catch2/catch.hpp>

#include "fixtures.hpp"

#include <cmath>
#include <limits>
#include <set>

using Catch::Contains;
using dsv2::cpu;
using dsv2::RangeError;
using dsv2::test::Case;
using dsv2::test::CpuCtx;
using Cache = dsv2::LatentCache<float, cpu>;

namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Everything observable about one sequence, to check that a failed call changed nothing.
struct SeqState {
    bool active = false;
    std::int64_t length = -1;
    std::vector<std::int32_t> pages;
    bool operator==(const SeqState&) const = default;
};
SeqState state(const Cache& c, std::int64_t seq) {
    if (!c.active(seq)) return {};
    return {true, c.length(seq), c.host_block_table(seq)};
}

// Checks the slot of every position against the block table, by the paging
// rule written out here, and that no two positions of any sequences share a slot.
void check_slots(const Cache& c, const std::vector<std::int64_t>& seqs) {
    const std::int64_t ps = c.page_size();
    std::set<std::int64_t> used;
    std::set<std::int32_t> pages;
    for (auto s : seqs) {
        INFO("sequence " << s << ", page size " << ps);
        const auto& bt = c.host_block_table(s);
        REQUIRE(std::ssize(bt) == ceil_div(c.length(s), ps));
        const auto dev = c.block_table(s);
        REQUIRE(dev.shape[0] == std::ssize(bt));
        for (std::int64_t i = 0; i < std::ssize(bt); ++i) {
            CHECK(dev(i) == bt[static_cast<std::size_t>(i)]);
            CHECK(pages.insert(bt[static_cast<std::size_t>(i)]).second);  // no page owned twice
        }
        for (std::int64_t p = 0; p < c.length(s); ++p) {
            const std::int64_t slot = c.slot(s, p);
            CHECK(slot == bt[static_cast<std::size_t>(p / ps)] * ps + p % ps);
            CHECK(slot >= 0);
            CHECK(slot < c.capacity_tokens());
            CHECK(used.insert(slot).second);
        }
    }
    CHECK(c.free_page_count() + std::ssize(pages) == c.n_pages());
}

// The tiny_v2 prompts and where each starts in the flattened golden arrays.
struct Prompts {
    std::vector<std::int32_t> tokens;
    std::vector<std::int64_t> lens, offsets;
    std::int64_t total = 0;
    explicit Prompts(const Case& c) : tokens(c.tokens()), lens(c.seq_lens()) {
        for (auto l : lens) {
            offsets.push_back(total);
            total += l;
        }
    }
};

// Runs the prompts in steps: step k sends tokens [cuts[k], cuts[k+1]) of every
// sequence long enough to have some. Returns the (N, V) logits in golden order.
std::vector<double> run_prompts(CpuCtx& ctx, const dsv2::Model<float, cpu>& model, dsv2::Session<float, cpu>& session,
                                const Prompts& p, const std::vector<std::int64_t>& cuts) {
    const std::int64_t vocab = model.config.vocab_size;
    std::vector<double> out(static_cast<std::size_t>(p.total * vocab), std::numeric_limits<double>::quiet_NaN());
    std::vector<std::int64_t> ids;
    for (std::size_t s = 0; s < p.lens.size(); ++s) ids.push_back(session.cache.add_sequence());
    for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
        std::vector<dsv2::SequenceTokens> batch;
        std::vector<std::int64_t> rows;  // golden row of each logits row
        for (std::size_t s = 0; s < p.lens.size(); ++s) {
            const std::int64_t b = cuts[k], e = std::min(cuts[k + 1], p.lens[s]);
            if (b >= e) continue;
            batch.push_back({ids[s], std::span<const std::int32_t>(p.tokens.data() + p.offsets[s] + b,
                                                                   static_cast<std::size_t>(e - b))});
            for (std::int64_t i = b; i < e; ++i) rows.push_back(p.offsets[s] + i);
        }
        if (batch.empty()) continue;
        const auto logits = model.forward(ctx, session, batch, dsv2::Logits::all);
        REQUIRE(logits.shape[0] == std::ssize(rows));
        for (std::size_t r = 0; r < rows.size(); ++r)
            for (std::int64_t v = 0; v < vocab; ++v)
                out[static_cast<std::size_t>(rows[r] * vocab + v)] = logits(static_cast<std::int64_t>(r), v);
    }
    return out;
}

void poison(Cache& c) {
    for (std::int64_t l = 0; l < c.n_layers(); ++l) {
        auto v = c.layer(l);
        std::fill(v.data, v.data + v.numel(), std::numeric_limits<float>::quiet_NaN());
    }
}

}  // namespace

TEST_CASE("cache geometry: width C + Dr, layers, accounting in bytes", "[cache]") {
    CpuCtx ctx(1);
    const Case c("tiny_v2");  // C 20, Dr 8, 3 layers
    auto bf = dsv2::LatentCache<dsv2::bf16, cpu>::for_config(ctx, c.config, 40, 2, 4);
    CHECK(bf.width() == 28);
    CHECK(bf.width() == c.config.kv_lora_rank + c.config.qk_rope_head_dim);
    CHECK(bf.n_layers() == 3);
    CHECK(bf.page_size() == 4);
    CHECK(bf.bytes_per_token() == 3 * 28 * 2);
    CHECK(bf.layer(0).shape == std::array<std::int64_t, 3>{bf.n_pages(), 4, 28});

    Cache f(ctx, 3, 28, 3, 7, 2);  // 7 pages of 3 tokens
    CHECK(f.bytes_per_token() == 3 * 28 * 4);
    CHECK(f.capacity_tokens() == 21);
    CHECK(f.capacity_bytes() == 3 * 7 * 3 * 28 * 4);
    CHECK(f.bytes_in_use() == 0);
    CHECK(f.max_sequences() == 2);
    const auto a = f.add_sequence();
    f.append(a, 4);  // 2 pages, whole pages count
    CHECK(f.bytes_in_use() == 2 * 3 * f.bytes_per_token());
    const auto b = f.add_sequence();
    f.append(b, 1);
    CHECK(f.bytes_in_use() == 3 * 3 * f.bytes_per_token());
    f.free(a);
    CHECK(f.bytes_in_use() == 1 * 3 * f.bytes_per_token());
}

TEST_CASE("cache append / truncate / free return and reuse pages", "[cache]") {
    CpuCtx ctx(1);
    Cache c(ctx, 2, 5, 4, 5, 3);  // 5 pages of 4 tokens, 3 sequence slots
    const auto a = c.add_sequence();
    CHECK(c.active(a));
    CHECK(c.length(a) == 0);
    CHECK(c.host_block_table(a).empty());
    CHECK(c.append(a, 5) == 0);  // returns the first new position
    CHECK(c.length(a) == 5);
    CHECK(c.host_block_table(a).size() == 2);
    CHECK(c.free_page_count() == 3);
    CHECK(c.append(a, 3) == 5);  // fills page 2 exactly: no new page
    CHECK(c.host_block_table(a).size() == 2);
    CHECK(c.append(a, 0) == 8);
    CHECK(c.append(a, 1) == 8);  // position 8 opens a third page
    CHECK(c.host_block_table(a).size() == 3);
    CHECK(c.free_page_count() == 2);

    const auto kept = c.host_block_table(a)[0];
    c.truncate(a, 4);  // one whole page left
    CHECK(c.length(a) == 4);
    CHECK(c.host_block_table(a) == std::vector<std::int32_t>{kept});
    CHECK(c.free_page_count() == 4);
    c.truncate(a, 4);  // no-op
    CHECK(c.free_page_count() == 4);
    c.truncate(a, 3);  // still one page
    CHECK(c.host_block_table(a).size() == 1);
    c.truncate(a, 0);
    CHECK(c.host_block_table(a).empty());
    CHECK(c.free_page_count() == 5);
    CHECK(c.active(a));

    // Pages of a freed sequence go to the next one; its slot id is reused.
    c.append(a, 20);  // every page
    CHECK(c.free_page_count() == 0);
    const std::set<std::int32_t> all(c.host_block_table(a).begin(), c.host_block_table(a).end());
    CHECK(all.size() == 5);
    c.free(a);
    CHECK_FALSE(c.active(a));
    CHECK(c.free_page_count() == 5);
    const auto b = c.add_sequence();
    CHECK(b == a);
    c.append(b, 20);
    CHECK(std::set<std::int32_t>(c.host_block_table(b).begin(), c.host_block_table(b).end()) == all);
    check_slots(c, {b});
}

TEST_CASE("cache slot mapping across page boundaries, page sizes 1, 3, 4, 64", "[cache]") {
    CpuCtx ctx(1);
    for (const std::int64_t ps : {1, 3, 4, 64}) {
        INFO("page size " << ps);
        const std::int64_t pages = ceil_div(130, ps) + 3;
        Cache c(ctx, 2, 6, ps, pages, 4);
        const auto a = c.add_sequence(), b = c.add_sequence(), d = c.add_sequence();
        // Interleaved appends of awkward sizes, so sequences own non-adjacent pages.
        const std::int64_t steps[][3] = {{5, 1, 2}, {1, 7, 0}, {31, 1, 1}, {2, 32, 33}, {1, 0, 4}};
        std::int64_t len[3] = {0, 0, 0};
        for (const auto& st : steps) {
            const std::int64_t ids[3] = {a, b, d};
            for (int s = 0; s < 3; ++s) {
                CHECK(c.append(ids[s], st[s]) == len[s]);
                len[s] += st[s];
            }
            check_slots(c, {a, b, d});
        }
        CHECK(c.length(a) == 40);
        CHECK(c.length(b) == 41);
        CHECK(c.length(d) == 40);
        // Truncating into the middle of a page keeps that page; the others come back.
        const std::int64_t before = c.free_page_count();
        c.truncate(b, 10);
        CHECK(c.free_page_count() == before + ceil_div(41, ps) - ceil_div(10, ps));
        check_slots(c, {a, b, d});
        c.append(b, 25);
        check_slots(c, {a, b, d});
    }
}

TEST_CASE("for_config holds max_tokens however they are split over max_sequences", "[cache]") {
    CpuCtx ctx(1);
    const Case c("tiny_v2");
    for (const std::int64_t ps : {1, 3, 4, 64}) {
        for (const std::int64_t total : {1, 10, 57, 200}) {
            const std::int64_t seqs = 5;
            INFO("page size " << ps << ", " << total << " tokens");
            auto cache = Cache::for_config(ctx, c.config, total, seqs, ps);
            CHECK(cache.capacity_tokens() >= total);
            // Worst case: every sequence but one holds a single token (a page each).
            const std::int64_t n = std::min(seqs, total);
            std::int64_t left = total;
            for (std::int64_t s = 0; s < n; ++s) {
                const auto id = cache.add_sequence();
                const std::int64_t len = s + 1 < n ? 1 : left;
                CHECK_NOTHROW(cache.append(id, len));
                left -= len;
            }
        }
    }
}

TEST_CASE("cache errors are RangeErrors and leave the cache unchanged", "[cache][errors]") {
    CpuCtx ctx(1);
    Cache c(ctx, 2, 5, 4, 3, 2);  // 3 pages of 4 tokens, 2 sequence slots
    const auto a = c.add_sequence();
    c.append(a, 5);  // 2 pages
    const auto b = c.add_sequence();

    SECTION("append past capacity") {
        const auto sa = state(c, a), sb = state(c, b);
        const auto free = c.free_page_count();
        REQUIRE_THROWS_AS(c.append(b, 9), RangeError);  // needs 3 pages, 1 free
        REQUIRE_THROWS_WITH(c.append(b, 9), Contains("append 9 tokens to sequence 1") && Contains("needs 3 more pages") &&
                                                Contains("1 free of 3"));
        CHECK(state(c, a) == sa);
        CHECK(state(c, b) == sb);
        CHECK(c.free_page_count() == free);
        CHECK(c.block_table(b).shape[0] == 0);
        c.append(a, 7);  // exactly the last page: fine
        CHECK(c.free_page_count() == 0);
        const auto full = state(c, a);
        REQUIRE_THROWS_AS(c.append(a, 1), RangeError);
        CHECK(state(c, a) == full);
        REQUIRE_THROWS_AS(c.append(b, 1), RangeError);
        CHECK(state(c, b) == sb);
        CHECK_NOTHROW(c.append(a, 0));
    }
    SECTION("truncate beyond the length") {
        const auto sa = state(c, a);
        REQUIRE_THROWS_AS(c.truncate(a, 6), RangeError);
        REQUIRE_THROWS_WITH(c.truncate(a, 6), Contains("truncate sequence 0 to 6") && Contains("expected 0..5"));
        REQUIRE_THROWS_WITH(c.truncate(a, -1), Contains("expected 0..5"));
        CHECK(state(c, a) == sa);
    }
    SECTION("negative append") {
        const auto sa = state(c, a);
        REQUIRE_THROWS_WITH(c.append(a, -2), Contains("negative token count -2"));
        CHECK(state(c, a) == sa);
    }
    SECTION("inactive sequence") {
        c.free(b);
        for (const std::int64_t id : {b, std::int64_t{2}, std::int64_t{-1}, std::int64_t{1000}}) {
            INFO("sequence " << id);
            REQUIRE_THROWS_AS(c.append(id, 1), RangeError);
            REQUIRE_THROWS_WITH(c.append(id, 1), Contains("append") && Contains("is not active"));
            REQUIRE_THROWS_WITH(c.truncate(id, 0), Contains("truncate") && Contains("is not active"));
            REQUIRE_THROWS_WITH(c.length(id), Contains("is not active"));
            REQUIRE_THROWS_WITH(c.slot(id, 0), Contains("is not active"));
            REQUIRE_THROWS_WITH(c.block_table(id), Contains("is not active"));
            REQUIRE_THROWS_WITH(c.free(id), Contains("is not active"));
        }
        CHECK(c.length(a) == 5);
    }
    SECTION("position outside the sequence") {
        REQUIRE_THROWS_AS(c.slot(a, 5), RangeError);
        REQUIRE_THROWS_WITH(c.slot(a, 5), Contains("position 5 outside 0..4"));
        REQUIRE_THROWS_WITH(c.slot(a, -1), Contains("position -1"));
    }
    SECTION("all sequence slots used") {
        REQUIRE_THROWS_AS(c.add_sequence(), RangeError);
        REQUIRE_THROWS_WITH(c.add_sequence(), Contains("all 2 sequence slots are in use"));
        c.free(a);
        CHECK(c.add_sequence() == a);
    }
    SECTION("invalid geometry") {
        REQUIRE_THROWS_AS(Cache(ctx, 2, 5, 0, 3, 2), RangeError);
        REQUIRE_THROWS_WITH(Cache(ctx, 2, 5, 4, 0, 2), Contains("must be positive"));
        REQUIRE_THROWS_WITH(Cache(ctx, 2, 5, 4, 3, 0), Contains("must be positive"));
        REQUIRE_THROWS_AS(Cache::for_config(ctx, dsv2::Config::tiny(), 10, 2, 0), RangeError);
        REQUIRE_THROWS_WITH(Cache::for_config(ctx, dsv2::Config::tiny(), -1, 2, 4), Contains("max_tokens -1"));
    }
}

TEST_CASE("model logits: page size 3 == one page per sequence == reference", "[cache][model]") {
    CpuCtx ctx(2);
    const Case c("tiny_v2");
    const Prompts p(c);
    const auto model = dsv2::load_model<float, cpu>(ctx, c.dir);
    const std::int64_t nseq = std::ssize(p.lens);

    auto many = model.new_session(ctx, p.total, nseq, 3);
    auto one = model.new_session(ctx, p.total, nseq, 64);  // 64 >= 57 tokens: one page per sequence
    REQUIRE(one.cache.n_pages() == nseq);
    const auto small_pages = run_prompts(ctx, model, many, p, {0, 64});
    const auto big_pages = run_prompts(ctx, model, one, p, {0, 64});
    CHECK(one.cache.free_page_count() == 0);
    std::int64_t used = 0;
    for (auto l : p.lens) used += ceil_div(l, 3);
    CHECK(many.cache.n_pages() - many.cache.free_page_count() == used);

    const auto shape = c.shape("logits");
    dsv2::test::compare("tiny_v2/logits(page 3 vs 64)", "f32", small_pages, big_pages, shape, {1e-6, 1e-6, 1e-12});
    dsv2::test::compare("tiny_v2/logits(page 3)", "f32", small_pages, c.f64("logits"), shape,
                        dsv2::test::tolerance<float>());
    dsv2::test::compare("tiny_v2/logits(page 64)", "f32", big_pages, c.f64("logits"), shape,
                        dsv2::test::tolerance<float>());
}

TEST_CASE("NaN-poisoned pages: only rows a sequence owns are read, the rest stay NaN", "[cache][model]") {
    CpuCtx ctx(2);
    const Case c("tiny_v2");
    const Prompts p(c);
    const auto model = dsv2::load_model<float, cpu>(ctx, c.dir);
    // Spare pages beyond what the prompts need, all poisoned before the first step.
    auto session = model.new_session(ctx, p.total + 30, std::ssize(p.lens) + 1, 4);
    auto& cache = session.cache;
    poison(cache);
    // Three steps with cuts inside pages, so sequences' pages interleave and
    // every sequence's last page is partly filled between steps.
    const auto logits = run_prompts(ctx, model, session, p, {0, 2, 9, 64});
    std::int64_t non_finite = 0;
    for (double v : logits) non_finite += !std::isfinite(v);
    CHECK(non_finite == 0);
    dsv2::test::compare("tiny_v2/logits(poisoned, chunked)", "f32", logits, c.f64("logits"), c.shape("logits"),
                        dsv2::test::tolerance<float>());

    // Rows holding a token are finite; every other row of every page is still NaN.
    const std::int64_t ps = cache.page_size();
    std::set<std::int64_t> written;
    for (std::int64_t s = 0; s < std::ssize(p.lens); ++s) {
        REQUIRE(cache.length(s) == p.lens[static_cast<std::size_t>(s)]);
        for (std::int64_t pos = 0; pos < cache.length(s); ++pos) written.insert(cache.slot(s, pos));
    }
    std::int64_t bad_written = 0, bad_untouched = 0, untouched = 0;
    for (std::int64_t l = 0; l < cache.n_layers(); ++l) {
        const auto pages = std::as_const(cache).layer(l);
        for (std::int64_t slot = 0; slot < cache.capacity_tokens(); ++slot) {
            const bool mine = written.count(slot) > 0;
            untouched += !mine;
            for (std::int64_t j = 0; j < cache.width(); ++j) {
                const float v = pages(slot / ps, slot % ps, j);
                if (mine && !std::isfinite(v)) ++bad_written;
                if (!mine && !std::isnan(v)) ++bad_untouched;
            }
        }
    }
    CHECK(untouched > 30 * cache.n_layers());  // the guard is not empty
    CHECK(bad_written == 0);
    CHECK(bad_untouched == 0);

    // A step that does not fit is refused and leaves every sequence as it was.
    const auto extra = cache.add_sequence();
    std::vector<std::int32_t> many(static_cast<std::size_t>(cache.free_page_count() * ps + 1), 3);
    const std::vector<dsv2::SequenceTokens> batch = {{extra, many}};
    const auto free_before = cache.free_page_count();
    REQUIRE_THROWS_AS(model.forward(ctx, session, batch), RangeError);
    REQUIRE_THROWS_WITH(model.forward(ctx, session, batch), Contains("more cache pages"));
    CHECK(cache.length(extra) == 0);
    CHECK(cache.free_page_count() == free_before);
}
