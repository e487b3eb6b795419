// Config: parsing the fixture configs, the published presets, derived
// quantities (parameter counts, YaRN scales, cache sizes) computed here by
// hand, and every error a user can reach through a config.json.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "temp_dir.hpp"

#include <cmath>
#include <fstream>

using Catch::Contains;
using dsv2::Config;
using dsv2::ConfigError;
using dsv2::Unsupported;
using json = nlohmann::json;

namespace {

json raw_config(const std::string& case_name) {
    std::ifstream in(dsv2::test::data_dir() / case_name / "config.json");
    REQUIRE(in.good());
    return json::parse(in);
}

// Field-by-field equality, so a failure names the field.
void check_same(const Config& a, const Config& b) {
#define DSV2_SAME(field) CHECK(a.field == b.field)
    DSV2_SAME(vocab_size);
    DSV2_SAME(hidden_size);
    DSV2_SAME(intermediate_size);
    DSV2_SAME(moe_intermediate_size);
    DSV2_SAME(num_hidden_layers);
    DSV2_SAME(num_attention_heads);
    DSV2_SAME(num_key_value_heads);
    DSV2_SAME(n_shared_experts);
    DSV2_SAME(n_routed_experts);
    DSV2_SAME(ep_size);
    DSV2_SAME(routed_scaling_factor);
    DSV2_SAME(kv_lora_rank);
    DSV2_SAME(q_lora_rank);
    DSV2_SAME(qk_rope_head_dim);
    DSV2_SAME(v_head_dim);
    DSV2_SAME(qk_nope_head_dim);
    DSV2_SAME(topk_method);
    DSV2_SAME(n_group);
    DSV2_SAME(topk_group);
    DSV2_SAME(num_experts_per_tok);
    DSV2_SAME(moe_layer_freq);
    DSV2_SAME(first_k_dense_replace);
    DSV2_SAME(norm_topk_prob);
    DSV2_SAME(scoring_func);
    DSV2_SAME(aux_loss_alpha);
    DSV2_SAME(seq_aux);
    DSV2_SAME(hidden_act);
    DSV2_SAME(max_position_embeddings);
    DSV2_SAME(initializer_range);
    DSV2_SAME(rms_norm_eps);
    DSV2_SAME(bos_token_id);
    DSV2_SAME(eos_token_id);
    DSV2_SAME(pad_token_id);
    DSV2_SAME(tie_word_embeddings);
    DSV2_SAME(rope_theta);
    DSV2_SAME(rope_scaling.kind);
    DSV2_SAME(rope_scaling.factor);
    DSV2_SAME(rope_scaling.original_max_position_embeddings);
    DSV2_SAME(rope_scaling.beta_fast);
    DSV2_SAME(rope_scaling.beta_slow);
    DSV2_SAME(rope_scaling.mscale);
    DSV2_SAME(rope_scaling.mscale_all_dim);
    DSV2_SAME(attention_bias);
    DSV2_SAME(attention_dropout);
#undef DSV2_SAME
}

// Parses `j` expecting exception type E whose message contains every needle.
template <class E>
void require_error(const json& j, std::initializer_list<const char*> needles) {
    REQUIRE_THROWS_AS(dsv2::config_from_json(j, "test.json"), E);
    for (const char* n : needles) REQUIRE_THROWS_WITH(dsv2::config_from_json(j, "test.json"), Contains(n));
}

}  // namespace

TEST_CASE("tiny_v2 config: every field as written in config.json", "[config]") {
    const Config c = dsv2::load_config(dsv2::test::data_dir() / "tiny_v2" / "config.json");
    CHECK(c.vocab_size == 97);
    CHECK(c.hidden_size == 40);
    CHECK(c.intermediate_size == 72);
    CHECK(c.moe_intermediate_size == 24);
    CHECK(c.num_hidden_layers == 3);
    CHECK(c.num_attention_heads == 4);
    CHECK(c.n_shared_experts == 2);
    CHECK(c.n_routed_experts == 8);
    CHECK(c.routed_scaling_factor == 2.5);
    CHECK(c.kv_lora_rank == 20);
    CHECK(c.q_lora_rank == 24);
    CHECK(c.qk_rope_head_dim == 8);
    CHECK(c.v_head_dim == 10);
    CHECK(c.qk_nope_head_dim == 12);
    CHECK(c.topk_method == dsv2::TopkMethod::group_limited_greedy);
    CHECK(c.n_group == 4);
    CHECK(c.topk_group == 2);
    CHECK(c.num_experts_per_tok == 3);
    CHECK(c.first_k_dense_replace == 1);
    CHECK_FALSE(c.norm_topk_prob);
    CHECK(c.max_position_embeddings == 64);
    CHECK(c.rms_norm_eps == 1e-6);
    CHECK(c.bos_token_id == 0);
    CHECK(c.eos_token_id == 1);
    CHECK_FALSE(c.pad_token_id.has_value());
    CHECK(c.rope_scaling.kind == dsv2::RopeScalingKind::yarn);  // given under "type"
    CHECK(c.rope_scaling.factor == 4.0);
    CHECK(c.rope_scaling.original_max_position_embeddings == 16);
    CHECK(c.rope_scaling.mscale == 0.707);
    CHECK(c.rope_scaling.mscale_all_dim == 0.707);
    CHECK(c.q_head_dim() == 20);
    CHECK(c.latent_dim() == 28);
    CHECK(c.shared_intermediate_size() == 48);
}

TEST_CASE("tiny_lite config: q_lora_rank null, \"gready\", rope_type, mscale_all_dim defaults to 0", "[config]") {
    const Config c = dsv2::load_config(dsv2::test::data_dir() / "tiny_lite" / "config.json");
    CHECK_FALSE(c.q_lora_rank.has_value());
    CHECK(c.topk_method == dsv2::TopkMethod::greedy);
    CHECK(c.norm_topk_prob);
    CHECK(c.num_experts_per_tok == 2);
    CHECK(c.rope_scaling.kind == dsv2::RopeScalingKind::yarn);  // given under "rope_type"
    CHECK(c.rope_scaling.factor == 8.0);
    CHECK(c.rope_scaling.original_max_position_embeddings == 8);
    CHECK(c.rope_scaling.beta_fast == 32.0);  // defaults
    CHECK(c.rope_scaling.beta_slow == 1.0);
    CHECK(c.rope_scaling.mscale == 0.707);
    CHECK(c.rope_scaling.mscale_all_dim == 0.0);
    // Without mscale_all_dim: softmax scale unscaled, (10 + 6)^-0.5; cos/sin carry 0.1 * 0.707 * ln 8 + 1.
    CHECK(c.softmax_scale() == Approx(0.25).epsilon(1e-15));
    CHECK(c.rotary_mscale() == Approx(0.1 * 0.707 * std::log(8.0) + 1.0).epsilon(1e-15));
}

TEST_CASE("tiny_plain config: no rope scaling, MoE every other layer", "[config]") {
    const Config c = dsv2::load_config(dsv2::test::data_dir() / "tiny_plain" / "config.json");
    CHECK(c.rope_scaling.kind == dsv2::RopeScalingKind::none);
    CHECK(c.rotary_mscale() == 1.0);
    CHECK(c.softmax_scale() == Approx(1.0 / std::sqrt(12.0)).epsilon(1e-15));
    CHECK(c.rms_norm_eps == 1e-3);
    CHECK(Config::latent_norm_eps == 1e-6);  // q_a/kv_a layernorms ignore rms_norm_eps
    CHECK(c.moe_layer_freq == 2);
    CHECK(c.first_k_dense_replace == 0);
    CHECK(c.topk_method == dsv2::TopkMethod::greedy);
}

TEST_CASE("fixture configs: softmax scale, rotary mscale and MoE layers match the reference's meta.json", "[config]") {
    for (const char* name : {"tiny_v2", "tiny_lite", "tiny_plain"}) {
        const dsv2::test::Case c(name);
        INFO(name);
        CHECK(c.config.softmax_scale() == Approx(c.meta["softmax_scale"].get<double>()).epsilon(1e-14));
        CHECK(c.config.rotary_mscale() == Approx(c.meta["rotary_mscale"].get<double>()).epsilon(1e-14));
        std::vector<std::int64_t> moe;
        for (std::int64_t i = 0; i < c.config.num_hidden_layers; ++i)
            if (c.config.is_moe_layer(i)) moe.push_back(i);
        CHECK(moe == c.meta["moe_layers"].get<std::vector<std::int64_t>>());
    }
}

TEST_CASE("fixture configs survive to_json -> config_from_json", "[config]") {
    for (const char* name : {"tiny_v2", "tiny_lite", "tiny_plain"}) {
        INFO(name);
        const dsv2::test::Case c(name);
        check_same(dsv2::config_from_json(dsv2::to_json(c.config)), c.config);
    }
}

TEST_CASE("DeepSeek-V2 preset equals the published config", "[config][preset]") {
    const Config c = Config::deepseek_v2();
    CHECK(c.hidden_size == 5120);
    CHECK(c.num_hidden_layers == 60);
    CHECK(c.num_attention_heads == 128);
    CHECK(c.q_lora_rank == 1536);
    CHECK(c.kv_lora_rank == 512);
    CHECK(c.qk_nope_head_dim == 128);
    CHECK(c.qk_rope_head_dim == 64);
    CHECK(c.v_head_dim == 128);
    CHECK(c.intermediate_size == 12288);
    CHECK(c.moe_intermediate_size == 1536);
    CHECK(c.n_routed_experts == 160);
    CHECK(c.n_shared_experts == 2);
    CHECK(c.num_experts_per_tok == 6);
    CHECK(c.topk_method == dsv2::TopkMethod::group_limited_greedy);
    CHECK(c.n_group == 8);
    CHECK(c.topk_group == 3);
    CHECK(c.routed_scaling_factor == 16.0);
    CHECK_FALSE(c.norm_topk_prob);
    CHECK(c.vocab_size == 102400);
    CHECK(c.rope_scaling.kind == dsv2::RopeScalingKind::yarn);
    CHECK(c.rope_scaling.factor == 40.0);
    CHECK(c.rope_scaling.original_max_position_embeddings == 4096);
    CHECK(c.rope_scaling.beta_fast == 32.0);
    CHECK(c.rope_scaling.beta_slow == 1.0);
    CHECK(c.rope_scaling.mscale == 0.707);
    CHECK(c.rope_scaling.mscale_all_dim == 0.707);
    CHECK(c.rope_theta == 10000.0);
    CHECK(c.max_position_embeddings == 163840);
    CHECK(c.rms_norm_eps == 1e-6);
    CHECK(c.first_k_dense_replace == 1);
    CHECK(c.moe_layer_freq == 1);
    CHECK_NOTHROW(c.validate());
    check_same(dsv2::config_from_json(dsv2::to_json(c)), c);
}

TEST_CASE("DeepSeek-V2-Lite preset equals the published config", "[config][preset]") {
    const Config c = Config::deepseek_v2_lite();
    CHECK(c.hidden_size == 2048);
    CHECK(c.num_hidden_layers == 27);
    CHECK(c.num_attention_heads == 16);
    CHECK_FALSE(c.q_lora_rank.has_value());
    CHECK(c.intermediate_size == 10944);
    CHECK(c.moe_intermediate_size == 1408);
    CHECK(c.n_routed_experts == 64);
    CHECK(c.n_shared_experts == 2);
    CHECK(c.num_experts_per_tok == 6);
    CHECK(c.topk_method == dsv2::TopkMethod::greedy);
    CHECK(c.routed_scaling_factor == 1.0);
    // "Other values as V2".
    CHECK(c.kv_lora_rank == 512);
    CHECK(c.qk_nope_head_dim == 128);
    CHECK(c.qk_rope_head_dim == 64);
    CHECK(c.v_head_dim == 128);
    CHECK(c.vocab_size == 102400);
    CHECK(c.rope_scaling.factor == 40.0);
    CHECK(c.rope_scaling.mscale_all_dim == 0.707);
    CHECK(c.max_position_embeddings == 163840);
    CHECK(c.first_k_dense_replace == 1);
    CHECK_NOTHROW(c.validate());
    CHECK_NOTHROW(Config::tiny().validate());
    check_same(dsv2::config_from_json(dsv2::to_json(c)), c);
    check_same(dsv2::config_from_json(dsv2::to_json(Config::tiny())), Config::tiny());
}

TEST_CASE("parameter counts: DeepSeek-V2 236B / 21B, V2-Lite 15.7B / 2.4B", "[config][params]") {
    // DeepSeek-V2, by hand (d 5120, h 128, 60 layers, layer 0 dense):
    //   attention per layer: q_a 1536*5120 + q_a_norm 1536 + q_b 128*192*1536
    //     + kv_a 576*5120 + kv_a_norm 512 + kv_b 128*256*512 + o 5120*128*128 = 149,227,520
    //   two norms per layer 10,240; dense MLP 3*5120*12288 = 188,743,680
    //   MoE layer: 160 experts * 3*5120*1536 (23,592,960 each) + shared 3*5120*3072 = 47,185,920
    //     + gate 160*5120 = 819,200  -> 3,822,878,720 total, 6 experts: 189,562,880 activated
    //   embedding = lm_head = 102400*5120 = 524,288,000; final norm 5120
    //   total     = 2*524,288,000 + 5,120 + 60*149,237,760 + 188,743,680 + 59*3,822,878,720
    //             = 235,741,434,880  (the paper's 236B)
    //   activated = 524,288,000 + 5,120 + 60*149,237,760 + 188,743,680 + 59*189,562,880
    //             = 20,851,512,320   (the paper's 21B; the embedding table is not counted)
    const auto v2 = dsv2::count_params(Config::deepseek_v2());
    CHECK(dsv2::attention_params(Config::deepseek_v2()) == 149'227'520);
    CHECK(v2.total == 235'741'434'880);
    CHECK(v2.activated == 20'851'512'320);
    CHECK(v2.embedding == 524'288'000);
    CHECK(std::llround(v2.total / 1e9) == 236);
    CHECK(std::llround(v2.activated / 1e9) == 21);

    // DeepSeek-V2-Lite (d 2048, h 16, 27 layers, q_proj directly):
    //   attention: q 16*192*2048 + kv_a 576*2048 + 512 + kv_b 16*256*512 + o 2048*16*128 = 13,763,072
    //   norms 4,096; dense 3*2048*10944 = 67,239,936
    //   MoE: 64 * 3*2048*1408 (8,650,752 each) + shared 3*2048*2816 = 17,301,504 + gate 131,072
    //   embedding = lm_head = 209,715,200; final norm 2048
    //   total     = 419,430,400 + 2,048 + 27*13,767,168 + 67,239,936 + 26*571,081,728 = 15,706,484,224
    //   activated = 209,715,200 + 2,048 + 27*13,767,168 + 67,239,936 + 26*69,337,088 = 2,451,435,008
    //   (the paper's 15.7B and 2.4B)
    const auto lite = dsv2::count_params(Config::deepseek_v2_lite());
    CHECK(dsv2::attention_params(Config::deepseek_v2_lite()) == 13'763'072);
    CHECK(lite.total == 15'706'484'224);
    CHECK(lite.activated == 2'451'435'008);
    CHECK(std::llround(lite.total / 1e8) == 157);
    CHECK(std::abs(lite.activated / 2.4e9 - 1.0) < 0.025);
}

TEST_CASE("YaRN scales of DeepSeek-V2: mscale 1.260804, softmax scale 0.1147214", "[config][yarn]") {
    const Config c = Config::deepseek_v2();
    // mscale(40, 0.707) = 0.0707 ln 40 + 1
    CHECK(Config::yarn_mscale(40.0, 0.707) == Approx(1.260804).epsilon(1e-6));
    CHECK(Config::yarn_mscale(40.0, 0.707) * Config::yarn_mscale(40.0, 0.707) == Approx(1.589626).epsilon(1e-6));
    CHECK(Config::yarn_mscale(1.0, 0.707) == 1.0);  // no scaling below factor 1
    CHECK(Config::yarn_mscale(0.5, 0.707) == 1.0);
    CHECK(c.softmax_scale() == Approx(0.1147214).epsilon(1e-6));
    CHECK(c.softmax_scale() == Approx(std::pow(192.0, -0.5) * std::pow(0.1 * 0.707 * std::log(40.0) + 1, 2)).epsilon(1e-14));
    // mscale and mscale_all_dim are equal: cos/sin are not rescaled.
    CHECK(c.rotary_mscale() == Approx(1.0).epsilon(1e-15));
    // The rotary-only fixture's config.json is partial, so read its meta.json directly.
    std::ifstream meta(dsv2::test::data_dir() / "rotary_dsv2" / "meta.json");
    REQUIRE(meta.good());
    CHECK(c.softmax_scale() == Approx(json::parse(meta)["softmax_scale"].get<double>()).epsilon(1e-14));
}

TEST_CASE("latent cache size: 576 values, 69,120 bytes per token for V2 in bf16, 31,104 for V2-Lite", "[config][cache]") {
    dsv2::test::CpuCtx ctx(1);
    const Config v2 = Config::deepseek_v2(), lite = Config::deepseek_v2_lite();
    CHECK(v2.latent_dim() == 576);
    CHECK(lite.latent_dim() == 576);
    // 576 values * 2 bytes * 60 layers, and * 27 layers. One one-token page is enough to ask.
    const auto c2 = dsv2::LatentCache<dsv2::bf16, dsv2::cpu>::for_config(ctx, v2, 1, 1, 1);
    const auto cl = dsv2::LatentCache<dsv2::bf16, dsv2::cpu>::for_config(ctx, lite, 1, 1, 1);
    CHECK(c2.bytes_per_token() == 69'120);
    CHECK(cl.bytes_per_token() == 31'104);
    CHECK(c2.width() == 576);
}

TEST_CASE("KV cache values per token follow the paper's Table 1", "[config][cache]") {
    const Config v2 = Config::deepseek_v2();
    const auto k = dsv2::kv_cache_values_per_token(v2, 8);
    // n_h = 128, d_h = 128, l = 60; MLA: d_c = 4 d_h = 512, d_h^R = d_h / 2 = 64.
    CHECK(k.mha == 2 * 128 * 128 * 60);  // 1,966,080
    CHECK(k.gqa == 2 * 8 * 128 * 60);
    CHECK(k.mqa == 2 * 128 * 60);
    CHECK(k.mla == (512 + 64) * 60);  // 34,560 = 4.5 d_h l: like GQA with 2.25 groups
    CHECK(k.mla * 4 == k.mqa * 9);

    // DeepSeek 67B (95 layers, GQA with 8 groups of d_h 128): at equal precision MLA
    // saves 1 - 34,560 / 194,560 = 82.2%.
    Config llm67b = v2;
    llm67b.num_hidden_layers = 95;
    const auto g = dsv2::kv_cache_values_per_token(llm67b, 8);
    CHECK(g.gqa == 194'560);
    CHECK(1.0 - static_cast<double>(k.mla) / static_cast<double>(g.gqa) == Approx(0.822).margin(5e-4));
}

TEST_CASE("is_moe_layer: first_k_dense_replace and moe_layer_freq", "[config]") {
    const Config v2 = Config::deepseek_v2();
    CHECK_FALSE(v2.is_moe_layer(0));
    for (std::int64_t i = 1; i < 60; ++i) CHECK(v2.is_moe_layer(i));
    Config c = v2;
    c.first_k_dense_replace = 3;
    c.moe_layer_freq = 2;
    // i >= 3 and i even: 4, 6, 8, ...
    for (std::int64_t i = 0; i < 12; ++i) CHECK(c.is_moe_layer(i) == (i >= 3 && i % 2 == 0));
    c.n_routed_experts = 0;  // no experts: every layer dense
    for (std::int64_t i = 0; i < 12; ++i) CHECK_FALSE(c.is_moe_layer(i));
}

TEST_CASE("config errors name the field", "[config][errors]") {
    const json base = raw_config("tiny_v2");
    REQUIRE_NOTHROW(dsv2::config_from_json(base));

    SECTION("missing required field") {
        for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                                  "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "max_position_embeddings",
                                  "intermediate_size"}) {
            INFO(field);
            json j = base;
            j.erase(field);
            require_error<ConfigError>(j, {"missing field", field, "test.json"});
            j[field] = nullptr;  // null counts as missing
            require_error<ConfigError>(j, {"missing field", field});
        }
    }
    SECTION("wrong types") {
        json j = base;
        j["hidden_size"] = "forty";
        require_error<ConfigError>(j, {"'hidden_size'", "expected an integer", "\"forty\""});
        j = base;
        j["hidden_size"] = 40.5;
        require_error<ConfigError>(j, {"'hidden_size'", "expected an integer", "40.5"});
        j = base;
        j["norm_topk_prob"] = 1;
        require_error<ConfigError>(j, {"'norm_topk_prob'", "expected true or false"});
        j = base;
        j["rms_norm_eps"] = "1e-6";
        require_error<ConfigError>(j, {"'rms_norm_eps'", "expected a number"});
        j = base;
        j["topk_method"] = 3;
        require_error<ConfigError>(j, {"'topk_method'", "expected a string"});
        j = base;
        j["q_lora_rank"] = json::array({24});
        require_error<ConfigError>(j, {"'q_lora_rank'", "expected an integer"});
        j = base;
        j["rope_scaling"] = "yarn";
        require_error<ConfigError>(j, {"'rope_scaling'", "expected an object or null"});
        j = base;
        j["rope_scaling"]["factor"] = "four";
        require_error<ConfigError>(j, {"rope_scaling", "'factor'", "expected a number"});
    }
    SECTION("whole-number floats are accepted as integers") {
        json j = base;
        j["hidden_size"] = 40.0;
        CHECK(dsv2::config_from_json(j).hidden_size == 40);
    }
    SECTION("unknown enumerations") {
        json j = base;
        j["topk_method"] = "best_first";
        require_error<ConfigError>(j, {"'topk_method'", "\"best_first\"", "group_limited_greedy"});
        j = base;
        j["scoring_func"] = "relu";
        require_error<ConfigError>(j, {"'scoring_func'", "\"relu\""});
        j = base;
        j["model_type"] = "llama";
        require_error<ConfigError>(j, {"'model_type'", "\"llama\""});
        j = base;
        j["hidden_act"] = "gelu";
        require_error<Unsupported>(j, {"'hidden_act'", "\"gelu\""});
    }
    SECTION("rope scaling kinds") {
        json j = base;
        j["rope_scaling"]["type"] = "linear";
        require_error<Unsupported>(j, {"rope_scaling", "\"linear\"", "not supported"});
        j = base;
        j["rope_scaling"].erase("type");
        j["rope_scaling"]["rope_type"] = "dynamic";
        require_error<Unsupported>(j, {"rope_scaling", "\"dynamic\""});
        j = base;
        j["rope_scaling"].erase("type");
        require_error<ConfigError>(j, {"rope_scaling", "missing field 'type'"});
        j = base;
        j["rope_scaling"].erase("factor");
        require_error<ConfigError>(j, {"rope_scaling", "missing field 'factor'"});
        j = base;
        j["rope_scaling"] = {{"type", "default"}};
        CHECK(dsv2::config_from_json(j).rope_scaling.kind == dsv2::RopeScalingKind::none);
        j = base;
        j["rope_scaling"] = nullptr;
        CHECK(dsv2::config_from_json(j).rope_scaling.kind == dsv2::RopeScalingKind::none);
    }
    SECTION("routing fields out of range") {
        json j = base;  // 8 experts, 4 groups keeping 2, top-3
        j["n_group"] = 3;
        require_error<ConfigError>(j, {"'n_group'", "divisor of n_routed_experts (8)", "found 3"});
        j = base;
        j["topk_group"] = 5;
        require_error<ConfigError>(j, {"'topk_group'", "1..n_group (4)", "found 5"});
        j = base;
        j["num_experts_per_tok"] = 9;
        require_error<ConfigError>(j, {"'num_experts_per_tok'", "found 9"});
        j = base;
        j["num_experts_per_tok"] = 0;
        require_error<ConfigError>(j, {"'num_experts_per_tok'", "found 0"});
        j = base;
        j["topk_group"] = 1;  // one group of 2 experts cannot supply 3
        require_error<ConfigError>(j, {"'num_experts_per_tok'", "3 experts cannot be chosen from 1 groups of 2"});
        j = base;
        j["routed_scaling_factor"] = 0.0;
        require_error<ConfigError>(j, {"'routed_scaling_factor'"});
        j = base;
        j["moe_intermediate_size"] = 0;
        require_error<ConfigError>(j, {"'moe_intermediate_size'", "positive"});
    }
    SECTION("shapes out of range") {
        json j = base;
        j["qk_rope_head_dim"] = 7;
        require_error<ConfigError>(j, {"'qk_rope_head_dim'", "even", "found 7"});
        j = base;
        j["hidden_size"] = -40;
        require_error<ConfigError>(j, {"'hidden_size'", "positive", "found -40"});
        j = base;
        j["q_lora_rank"] = 0;
        require_error<ConfigError>(j, {"'q_lora_rank'", "positive"});
        j = base;
        j["rms_norm_eps"] = 0.0;
        require_error<ConfigError>(j, {"'rms_norm_eps'"});
        j = base;
        j["rope_scaling"]["factor"] = -1.0;
        require_error<ConfigError>(j, {"'rope_scaling.factor'"});
        j = base;
        j["tie_word_embeddings"] = true;
        require_error<Unsupported>(j, {"'tie_word_embeddings'"});
    }
    SECTION("non-object JSON") {
        require_error<ConfigError>(json::array({1, 2}), {"expected a JSON object", "array"});
        require_error<ConfigError>(json(5), {"expected a JSON object", "number"});
    }
}

TEST_CASE("load_config: missing and malformed files", "[config][errors]") {
    const dsv2::test::TempDir dir("dsv2-config");
    const auto missing = dir / "nope.json";
    REQUIRE_THROWS_AS(dsv2::load_config(missing), ConfigError);
    REQUIRE_THROWS_WITH(dsv2::load_config(missing), Contains("nope.json") && Contains("cannot open"));

    const auto bad = dir.write("bad.json", "{\"hidden_size\": 40,, }");
    REQUIRE_THROWS_AS(dsv2::load_config(bad), ConfigError);
    REQUIRE_THROWS_WITH(dsv2::load_config(bad), Contains("bad.json") && Contains("malformed JSON"));

    const auto empty = dir.write("empty.json", "");
    REQUIRE_THROWS_WITH(dsv2::load_config(empty), Contains("malformed JSON"));

    const auto array = dir.write("array.json", "[1, 2, 3]");
    REQUIRE_THROWS_WITH(dsv2::load_config(array), Contains("array.json") && Contains("expected a JSON object"));

    // A file written from a parsed fixture loads back identically, and the source is named in errors.
    json j = raw_config("tiny_lite");
    const auto good = dir.write("good.json", j.dump(2));
    check_same(dsv2::load_config(good), dsv2::load_config(dsv2::test::data_dir() / "tiny_lite" / "config.json"));
    j.erase("v_head_dim");
    const auto partial = dir.write("partial.json", j.dump());
    REQUIRE_THROWS_WITH(dsv2::load_config(partial), Contains("partial.json") && Contains("missing field 'v_head_dim'"));
}
