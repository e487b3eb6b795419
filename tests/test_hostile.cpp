// Hostile inputs (docs/reliability.md): each defect the fuzzers and the
// sanitizer build found gets its regression test here, with the runtime
// limits a caller can reach (cache geometry, hand-built page tables) and the
// f16 numerics that overflow a naive half-precision path.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "temp_dir.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

using Catch::Contains;
using namespace dsv2;
using namespace dsv2::test;
using json = nlohmann::json;

namespace {

json tiny_config() {
    std::ifstream in(data_dir() / "tiny_v2" / "config.json");
    return json::parse(in);
}

void require_config_error(const json& j, std::initializer_list<const char*> needles) {
    REQUIRE_THROWS_AS(config_from_json(j, "hostile.json"), ConfigError);
    for (const char* n : needles) REQUIRE_THROWS_WITH(config_from_json(j, "hostile.json"), Contains(n));
}

// The tensors of a checkpoint as writable entries (to poison one, then write).
std::vector<StWriteEntry> entries_of(const std::filesystem::path& file) {
    const SafetensorsFile f(file);
    std::vector<StWriteEntry> out;
    for (const auto& [name, t] : f.tensors()) {
        const auto b = f.bytes(t);
        out.push_back({name, t.dtype, t.shape, std::vector<char>(b.begin(), b.end())});
    }
    return out;
}

}  // namespace

TEST_CASE("config: sizes beyond sane limits are named, not overflowed or allocated", "[hostile][config]") {
    const json base = tiny_config();
    REQUIRE_NOTHROW(config_from_json(base));
    SECTION("one width far too large (1e12)") {
        auto j = base;
        j["hidden_size"] = 1'000'000'000'000;
        require_config_error(j, {"'hidden_size'", "1000000000000", "limit of 1048576"});
    }
    SECTION("2^62 layers: rejected at once, not looped over") {
        auto j = base;
        j["num_hidden_layers"] = std::int64_t{1} << 62;
        require_config_error(j, {"'num_hidden_layers'", "limit of 65536"});
    }
    SECTION("each field within its limit, the product beyond int64-safe sizes") {
        auto j = base;
        j["vocab_size"] = 1 << 24;
        j["hidden_size"] = 1 << 20;
        j["n_routed_experts"] = 1 << 16;
        j["n_group"] = 1;
        j["topk_group"] = 1;
        j["moe_intermediate_size"] = 1 << 20;
        j["num_hidden_layers"] = 1 << 16;
        require_config_error(j, {"parameters", "limit of 1e+15"});
    }
    SECTION("moe_layer_freq 0 with routed experts: a clear error, not a division by zero") {
        auto j = base;
        j["moe_layer_freq"] = 0;
        j["first_k_dense_replace"] = 0;
        require_config_error(j, {"'moe_layer_freq'", "positive"});
    }
    SECTION("a number the JSON parser reads as Inf") {
        auto j = base;
        j["rms_norm_eps"] = std::numeric_limits<double>::infinity();
        require_config_error(j, {"'rms_norm_eps'", "finite"});
        j = base;
        j["rope_scaling"]["factor"] = std::numeric_limits<double>::infinity();
        require_config_error(j, {"'factor'", "finite"});
    }
    SECTION("YaRN mscales that make the rotary or softmax scale infinite or zero") {
        auto j = base;
        // mscale(s, m) = 0.1 m ln s + 1 is -1 for m = -20 / ln s: a negative rotary scale.
        j["rope_scaling"]["mscale_all_dim"] = -20.0 / std::log(j["rope_scaling"]["factor"].get<double>());
        require_config_error(j, {"rotary scale", "finite and positive"});
        j = base;
        j["rope_scaling"]["mscale_all_dim"] = 1e300;
        require_config_error(j, {"softmax scale", "finite and positive"});
    }
    SECTION("1e999 in a file: the parser's overflow is a ConfigError, not a json exception") {
        const TempDir dir;
        std::string text = base.dump();
        text.insert(1, "\"rms_norm_eps\": 1e999, ");
        const auto path = dir.write("config.json", text);
        REQUIRE_THROWS_AS(load_config(path), ConfigError);
        REQUIRE_THROWS_WITH(load_config(path), Contains("config.json") && Contains("malformed JSON") &&
                                                   Contains("number overflow"));
    }
}

TEST_CASE("safetensors: a shape entry above INT64_MAX is rejected", "[hostile][safetensors]") {
    const TempDir dir;
    const std::string header =
        R"({"w":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}})";
    std::string raw(8, '\0');
    const std::uint64_t len = header.size();
    std::memcpy(raw.data(), &len, 8);
    raw += header + std::string(8, '\0');
    const auto path = dir.write("big.safetensors", raw);
    REQUIRE_THROWS_AS(SafetensorsFile(path), CheckpointError);
    REQUIRE_THROWS_WITH(SafetensorsFile(path), Contains("w in big.safetensors") && Contains("not a non-negative integer"));
}

TEST_CASE("npy: reading floats as integers rejects NaN, Inf and out-of-range values", "[hostile][npy]") {
    const TempDir dir;
    for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(), 1e300,
                             9.3e18, 2.5}) {
        const std::vector<double> values{1.0, bad};
        write_npy<double>(dir / "x.npy", values, {2});
        const auto a = read_npy(dir / "x.npy");
        INFO("value " << bad);
        REQUIRE_THROWS_AS(a.as<std::int64_t>("ids"), CheckpointError);
        REQUIRE_THROWS_WITH(a.as<std::int64_t>("ids"), Contains("ids: element 1") && Contains("int64"));
        REQUIRE_THROWS_WITH(a.as<std::int32_t>("ids"), Contains("int32"));
        CHECK_NOTHROW(a.as<double>());
    }
    // The extremes that do fit are kept exactly.
    const std::vector<double> ok{-9223372036854775808.0, 2147483647.0, -2147483648.0};
    write_npy<double>(dir / "ok.npy", ok, {3});
    CHECK(read_npy(dir / "ok.npy").as<std::int64_t>() ==
          std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), 2147483647, -2147483648LL});
    const std::vector<double> ok32{2147483647.0, -2147483648.0};
    write_npy<double>(dir / "ok32.npy", ok32, {2});
    CHECK(read_npy(dir / "ok32.npy").as<std::int32_t>() ==
          std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::max(), std::numeric_limits<std::int32_t>::min()});
}

TEST_CASE("token id lists: every item an int32, each bad item named", "[hostile][tokens]") {
    CHECK(parse_token_ids("1, 2,3") == std::vector<std::int32_t>{1, 2, 3});
    CHECK(parse_token_ids(" -5 ,+7,, 0 ") == std::vector<std::int32_t>{-5, 7, 0});
    CHECK(parse_token_ids("2147483647,-2147483648") ==
          std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::max(), std::numeric_limits<std::int32_t>::min()});
    for (const char* bad : {"2147483648", "-2147483649", "12abc", "1 2", "-", "+", "0x10", "99999999999999999999", "1e3"}) {
        INFO(bad);
        REQUIRE_THROWS_AS(parse_token_ids(std::string("4,") + bad), RangeError);
        REQUIRE_THROWS_WITH(parse_token_ids(std::string("4,") + bad), Contains(std::string("'") + bad + "' is not a token id"));
    }
    REQUIRE_THROWS_WITH(parse_token_ids(" , ,"), Contains("no token ids given"));
    REQUIRE_THROWS_WITH(parse_token_ids(""), Contains("no token ids given"));
}

TEST_CASE("cache: geometry beyond int32 page ids or int64 sums is rejected before allocating", "[hostile][cache]") {
    CpuCtx ctx;
    using Cache = LatentCache<float, cpu>;
    // 2^31 pages of one 1-wide token would be an 8 GiB allocation whose page ids wrap.
    REQUIRE_THROWS_AS(Cache(ctx, 1, 1, 1, std::int64_t{1} << 31, 1), RangeError);
    REQUIRE_THROWS_WITH(Cache(ctx, 1, 1, 1, std::int64_t{1} << 31, 1), Contains("page ids are int32"));
    REQUIRE_THROWS_AS(Cache::for_config(ctx, Config::tiny(), std::numeric_limits<std::int64_t>::max(), 16, 64), RangeError);
    REQUIRE_THROWS_WITH(Cache::for_config(ctx, Config::tiny(), std::numeric_limits<std::int64_t>::max(), 16, 64),
                        Contains("max_tokens must be 0..2^40"));
}

TEST_CASE("cache kernels: a hand-built slot or page table out of range throws and writes nothing",
          "[hostile][cache]") {
    CpuCtx ctx;
    const std::int64_t pages = 3, page = 4, w = 5;
    Tensor<float, cpu, 3> store({pages, page, w});
    for (std::int64_t i = 0; i < store.numel(); ++i) store.data()[i] = std::numeric_limits<float>::quiet_NaN();
    Tensor<float, cpu, 2> rows({2, w});
    for (std::int64_t i = 0; i < rows.numel(); ++i) rows.data()[i] = 1.0f;
    auto untouched = [&] {
        for (std::int64_t i = 0; i < store.numel(); ++i)
            if (!std::isnan(store.data()[i])) return false;
        return true;
    };
    for (const std::int64_t bad : {std::int64_t{-1}, pages * page, std::int64_t{1} << 40}) {
        Tensor<std::int64_t, cpu, 1> slots({2});
        slots.data()[0] = 0;  // valid: must not be written either, since the batch is rejected whole
        slots.data()[1] = bad;
        INFO("slot " << bad);
        REQUIRE_THROWS_AS(cache_write(ctx, rows.cview(), slots.cview(), store.view()), RangeError);
        REQUIRE_THROWS_WITH(cache_write(ctx, rows.cview(), slots.cview(), store.view()),
                            Contains("token 1 has cache slot") && Contains("outside the 12 slots"));
        CHECK(untouched());
    }
    Tensor<float, cpu, 2> out({2 * page, w});
    for (const std::int32_t bad : {-1, 3, std::numeric_limits<std::int32_t>::max()}) {
        Tensor<std::int32_t, cpu, 1> table({2});
        table.data()[0] = 1;
        table.data()[1] = bad;
        INFO("page " << bad);
        REQUIRE_THROWS_AS(cache_gather(ctx, store.cview(), table.cview(), out.view()), RangeError);
        REQUIRE_THROWS_WITH(cache_gather(ctx, store.cview(), table.cview(), out.view()),
                            Contains("block table entry 1") && Contains("outside the cache's pages [0, 3)"));
    }
}

TEST_CASE("load: an F32 weight beyond f16's range is a clear error in f16, exact in f32", "[hostile][checkpoint][f16]") {
    CpuCtx ctx;
    const Case c("tiny_v2");
    const TempDir dir;
    std::filesystem::copy_file(c.dir / "config.json", dir / "config.json");
    auto entries = entries_of(c.dir / "model.safetensors");
    const std::string target = "model.layers.1.self_attn.o_proj.weight";
    bool found = false;
    for (auto& e : entries) {
        if (e.name != target) continue;
        REQUIRE(e.dtype == StDType::F32);
        const float big = 1.0e5f;  // f16's largest finite value is 65504
        std::memcpy(e.bytes.data() + 3 * sizeof(float), &big, sizeof big);
        found = true;
    }
    REQUIRE(found);
    write_safetensors(dir / "model.safetensors", entries);
    auto load_f16 = [&] { return load_model<f16, cpu>(ctx, dir.path()); };
    REQUIRE_THROWS_AS(load_f16(), CheckpointError);
    REQUIRE_THROWS_WITH(load_f16(),
                        Contains(target) && Contains("element 3 is 100000") && Contains("beyond the range of f16") &&
                            Contains("wider dtype"));
    const auto m = load_model<float, cpu>(ctx, dir.path());
    CHECK(m.config.hidden_size == c.config.hidden_size);
}

TEST_CASE("f16: activations far beyond 65504 stay in f32; logits finite and equal to the f32 model's",
          "[hostile][f16]") {
    CpuCtx ctx(2);
    const Config cfg = Config::tiny();
    Model<float, cpu> m32(ctx, cfg);
    init_random(ctx, m32, 7);
    // Weights every f16 can hold (so both models hold the same numbers), but
    // scaled so that the residual stream is ~1e4..1e5: the embedding's mean
    // square alone is ~1e9, far past f16's 65504, and the attention and MLP
    // outputs add tens of thousands more per layer.
    std::map<std::string, std::vector<float>> weights;
    double embed_mean_square = 0;
    m32.for_each_weight([&](const std::string& name, auto& t) {
        const bool embed = name.ends_with("embed_tokens.weight");
        const bool out_proj = name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight");
        const float scale = embed ? 3.0e4f : out_proj ? 2.0e4f : 1.0f;
        std::vector<float> v(static_cast<std::size_t>(t.numel()));
        for (std::size_t i = 0; i < v.size(); ++i) {
            const float x = std::clamp(static_cast<float>(t.data()[i]) * scale, -6.0e4f, 6.0e4f);
            v[i] = static_cast<float>(f16(x));
            t.data()[i] = convert<typename std::decay_t<decltype(t)>::value_type>(v[i]);
            if (embed) embed_mean_square += static_cast<double>(v[i]) * v[i] / static_cast<double>(v.size());
        }
        weights[name] = std::move(v);
    });
    REQUIRE(embed_mean_square > 1e8);  // RMSNorm's mean of squares: Inf in a naive f16 path
    Model<f16, cpu> m16(ctx, cfg);
    m16.for_each_weight([&](const std::string& name, auto& t) {
        const auto& v = weights.at(name);
        REQUIRE(std::ssize(v) == t.numel());
        for (std::size_t i = 0; i < v.size(); ++i)
            t.data()[i] = convert<typename std::decay_t<decltype(t)>::value_type>(v[i]);
    });

    std::vector<std::int32_t> prompt;
    for (int i = 0; i < 24; ++i) prompt.push_back((i * 37 + 11) % static_cast<int>(cfg.vocab_size));
    auto logits_of = [&](const auto& model) {
        auto session = model.new_session(ctx, std::ssize(prompt), 1);
        const SequenceTokens seq{session.cache.add_sequence(), prompt};
        const auto l = model.forward(ctx, session, std::span(&seq, 1), Logits::all);
        return std::vector<double>(l.data, l.data + l.numel());
    };
    const auto l32 = logits_of(m32);
    const auto l16 = logits_of(m16);
    REQUIRE(l32.size() == l16.size());
    double scale = 0, worst = 0;
    for (std::size_t i = 0; i < l32.size(); ++i) {
        REQUIRE(std::isfinite(l32[i]));
        REQUIRE(std::isfinite(l16[i]));
        scale = std::max(scale, std::abs(l32[i]));
        worst = std::max(worst, std::abs(l16[i] - l32[i]));
    }
    INFO("largest |logit| " << scale << ", worst |f16 - f32| " << worst);
    // f16 only stores (weights, latent cache); arithmetic is f32 in both.
    CHECK(worst <= DTypeTraits<f16>::rtol * scale);
}

TEST_CASE("load_weights: a checkpoint that does not fit leaves the model untouched", "[hostile][checkpoint]") {
    CpuCtx ctx;
    const Case c("tiny_v2");
    auto model = load_model<float, cpu>(ctx, c.dir);
    const std::vector<float> embed_before(model.embed_tokens.data(),
                                          model.embed_tokens.data() + model.embed_tokens.numel());
    // The first tensor visited changes, the last one has the wrong shape.
    auto entries = entries_of(c.dir / "model.safetensors");
    for (auto& e : entries) {
        if (e.name == "model.embed_tokens.weight") {
            for (std::size_t i = 0; i + sizeof(float) <= e.bytes.size(); i += sizeof(float)) {
                float v;
                std::memcpy(&v, e.bytes.data() + i, sizeof v);
                v = 2 * v + 1;
                std::memcpy(e.bytes.data() + i, &v, sizeof v);
            }
        }
        if (e.name == "lm_head.weight") e.shape = {e.shape[0] * e.shape[1]};
    }
    const TempDir dir;
    write_safetensors(dir / "model.safetensors", entries);
    const Checkpoint ckpt(dir.path());
    REQUIRE_THROWS_AS(load_weights(ctx, model, ckpt), CheckpointError);
    REQUIRE_THROWS_WITH(load_weights(ctx, model, ckpt), Contains("lm_head.weight") && Contains("expected shape"));
    const std::vector<float> embed_after(model.embed_tokens.data(), model.embed_tokens.data() + model.embed_tokens.numel());
    CHECK(embed_after == embed_before);
}
