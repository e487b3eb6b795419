// The model configuration: every field of a Hugging Face DeepSeek-V2
// `config.json`, parsed and validated with messages that name the field, and
// presets equal to the published DeepSeek-V2 and DeepSeek-V2-Lite configs.
#pragma once

#include "dsv2/core/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace dsv2 {

enum class RopeScalingKind { none, yarn };
enum class TopkMethod { greedy, group_limited_greedy, noaux_tc };
enum class ScoringFunc { softmax, sigmoid };

struct RopeScaling {
    RopeScalingKind kind = RopeScalingKind::none;
    double factor = 1.0;
    std::int64_t original_max_position_embeddings = 4096;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 0.0;  // 0: the softmax scale is not corrected
};

struct Config {
    std::int64_t vocab_size = 0;
    std::int64_t hidden_size = 0;
    std::int64_t intermediate_size = 0;      // dense MLP width
    std::int64_t moe_intermediate_size = 0;  // width of one routed expert
    std::int64_t num_hidden_layers = 0;
    std::int64_t num_attention_heads = 0;
    std::int64_t num_key_value_heads = 0;  // unused by MLA; kept for round trips
    std::int64_t n_shared_experts = 0;
    std::int64_t n_routed_experts = 0;  // 0: every layer is dense
    std::int64_t ep_size = 1;
    double routed_scaling_factor = 1.0;
    std::int64_t kv_lora_rank = 0;
    std::optional<std::int64_t> q_lora_rank;  // null: q_proj directly
    std::int64_t qk_rope_head_dim = 0;
    std::int64_t v_head_dim = 0;
    std::int64_t qk_nope_head_dim = 0;
    TopkMethod topk_method = TopkMethod::greedy;
    std::int64_t n_group = 1;
    std::int64_t topk_group = 1;
    std::int64_t num_experts_per_tok = 0;
    std::int64_t moe_layer_freq = 1;
    std::int64_t first_k_dense_replace = 0;
    bool norm_topk_prob = false;
    ScoringFunc scoring_func = ScoringFunc::softmax;
    double aux_loss_alpha = 0.001;
    bool seq_aux = true;
    std::string hidden_act = "silu";
    std::int64_t max_position_embeddings = 0;
    double initializer_range = 0.02;
    double rms_norm_eps = 1e-6;
    std::optional<std::int64_t> bos_token_id;
    std::optional<std::int64_t> eos_token_id;
    std::optional<std::int64_t> pad_token_id;
    bool tie_word_embeddings = false;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    bool attention_bias = false;
    double attention_dropout = 0.0;

    // The official code normalises the q/kv low-rank latents with this eps,
    // whatever rms_norm_eps says.
    static constexpr double latent_norm_eps = 1e-6;

    // ---- derived quantities -------------------------------------------------
    std::int64_t q_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
    // Values cached per token per layer by MLA: [c_kv | k_pe].
    std::int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }
    bool is_moe_layer(std::int64_t i) const {
        return n_routed_experts > 0 && i >= first_k_dense_replace && i % moe_layer_freq == 0;
    }
    std::int64_t shared_intermediate_size() const { return moe_intermediate_size * n_shared_experts; }

    static double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }
    // Magnitude applied to cos/sin.
    double rotary_mscale() const {
        if (rope_scaling.kind != RopeScalingKind::yarn) return 1.0;
        return yarn_mscale(rope_scaling.factor, rope_scaling.mscale) /
               yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    }
    double softmax_scale() const {
        double s = 1.0 / std::sqrt(static_cast<double>(q_head_dim()));
        if (rope_scaling.kind == RopeScalingKind::yarn && rope_scaling.mscale_all_dim != 0.0) {
            const double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
            s *= m * m;
        }
        return s;
    }

    // Throws ConfigError naming the first field that is out of range.
    void validate(std::string_view source = "config") const;

    // ---- presets -------------------------------------------------------------
    static Config deepseek_v2();       // deepseek-ai/DeepSeek-V2 config.json
    static Config deepseek_v2_lite();  // deepseek-ai/DeepSeek-V2-Lite config.json
    static Config tiny();              // every feature on, small enough for tests and demos
};

std::string_view to_string(TopkMethod m);

namespace config_detail {

using json = nlohmann::json;

template <class V>
V get(const json& j, std::string_view source, const char* field) {
    const auto it = j.find(field);
    DSV2_CHECK(it != j.end() && !it->is_null(), ConfigError, "[config] {}: missing field '{}'", source, field);
    try {
        if constexpr (std::is_same_v<V, std::int64_t>) {
            // Whole-number floats ("4096.0") are accepted; anything that would
            // not fit an int64 exactly is rejected before the cast.
            const bool whole_float = it->is_number_float() && std::floor(it->template get<double>()) == it->template get<double>() &&
                                     std::abs(it->template get<double>()) < 9.0e15;
            DSV2_CHECK(it->is_number_integer() || whole_float, ConfigError,
                       "[config] {}: field '{}': expected an integer, found {}", source, field, it->dump());
            return it->is_number_integer() ? it->template get<std::int64_t>()
                                           : static_cast<std::int64_t>(it->template get<double>());
        } else if constexpr (std::is_same_v<V, double>) {
            DSV2_CHECK(it->is_number(), ConfigError, "[config] {}: field '{}': expected a number, found {}",
                       source, field, it->dump());
            DSV2_CHECK(std::isfinite(it->template get<double>()), ConfigError,
                       "[config] {}: field '{}': expected a finite number, found {}", source, field, it->dump());
            return it->template get<double>();
        } else if constexpr (std::is_same_v<V, bool>) {
            DSV2_CHECK(it->is_boolean(), ConfigError, "[config] {}: field '{}': expected true or false, found {}",
                       source, field, it->dump());
            return it->template get<bool>();
        } else {
            DSV2_CHECK(it->is_string(), ConfigError, "[config] {}: field '{}': expected a string, found {}",
                       source, field, it->dump());
            return it->template get<std::string>();
        }
    } catch (const json::exception& e) {
        DSV2_FAIL(ConfigError, "[config] {}: field '{}': {}", source, field, e.what());
    }
}

template <class V>
V get_or(const json& j, std::string_view source, const char* field, V fallback) {
    const auto it = j.find(field);
    if (it == j.end() || it->is_null()) return fallback;
    return get<V>(j, source, field);
}

template <class V>
std::optional<V> get_optional(const json& j, std::string_view source, const char* field) {
    const auto it = j.find(field);
    if (it == j.end() || it->is_null()) return std::nullopt;
    return get<V>(j, source, field);
}

}  // namespace config_detail

inline std::string_view to_string(TopkMethod m) {
    switch (m) {
        case TopkMethod::greedy: return "greedy";
        case TopkMethod::group_limited_greedy: return "group_limited_greedy";
        case TopkMethod::noaux_tc: return "noaux_tc";
    }
    return "?";
}

// Parses a DeepSeek-V2 config.json object. `source` names it in errors.
inline Config config_from_json(const nlohmann::json& j, std::string_view source = "config.json") {
    using namespace config_detail;
    DSV2_CHECK(j.is_object(), ConfigError, "[config] {}: expected a JSON object, found {}", source,
               std::string(j.type_name()));
    if (auto mt = get_optional<std::string>(j, source, "model_type")) {
        DSV2_CHECK(*mt == "deepseek_v2" || *mt == "deepseek_v3", ConfigError,
                   "[config] {}: field 'model_type': expected \"deepseek_v2\", found \"{}\"", source, *mt);
    }
    Config c;
    c.vocab_size = get<std::int64_t>(j, source, "vocab_size");
    c.hidden_size = get<std::int64_t>(j, source, "hidden_size");
    c.intermediate_size = get<std::int64_t>(j, source, "intermediate_size");
    c.num_hidden_layers = get<std::int64_t>(j, source, "num_hidden_layers");
    c.num_attention_heads = get<std::int64_t>(j, source, "num_attention_heads");
    c.num_key_value_heads = get_or<std::int64_t>(j, source, "num_key_value_heads", c.num_attention_heads);
    c.n_routed_experts = get_or<std::int64_t>(j, source, "n_routed_experts", 0);
    c.n_shared_experts = get_or<std::int64_t>(j, source, "n_shared_experts", 0);
    c.moe_intermediate_size = get_or<std::int64_t>(j, source, "moe_intermediate_size", 0);
    c.ep_size = get_or<std::int64_t>(j, source, "ep_size", 1);
    c.routed_scaling_factor = get_or<double>(j, source, "routed_scaling_factor", 1.0);
    c.kv_lora_rank = get<std::int64_t>(j, source, "kv_lora_rank");
    c.q_lora_rank = get_optional<std::int64_t>(j, source, "q_lora_rank");
    c.qk_rope_head_dim = get<std::int64_t>(j, source, "qk_rope_head_dim");
    c.v_head_dim = get<std::int64_t>(j, source, "v_head_dim");
    c.qk_nope_head_dim = get<std::int64_t>(j, source, "qk_nope_head_dim");
    const std::string method = get_or<std::string>(j, source, "topk_method", "greedy");
    if (method == "greedy" || method == "gready") {  // early configs spell it "gready"
        c.topk_method = TopkMethod::greedy;
    } else if (method == "group_limited_greedy") {
        c.topk_method = TopkMethod::group_limited_greedy;
    } else if (method == "noaux_tc") {
        c.topk_method = TopkMethod::noaux_tc;
    } else {
        DSV2_FAIL(ConfigError,
                  "[config] {}: field 'topk_method': expected \"greedy\", \"group_limited_greedy\" or "
                  "\"noaux_tc\", found \"{}\"",
                  source, method);
    }
    c.n_group = get_or<std::int64_t>(j, source, "n_group", 1);
    c.topk_group = get_or<std::int64_t>(j, source, "topk_group", 1);
    c.num_experts_per_tok = get_or<std::int64_t>(j, source, "num_experts_per_tok", 0);
    c.moe_layer_freq = get_or<std::int64_t>(j, source, "moe_layer_freq", 1);
    c.first_k_dense_replace = get_or<std::int64_t>(j, source, "first_k_dense_replace", 0);
    c.norm_topk_prob = get_or<bool>(j, source, "norm_topk_prob", false);
    const std::string scoring = get_or<std::string>(j, source, "scoring_func", "softmax");
    if (scoring == "softmax") {
        c.scoring_func = ScoringFunc::softmax;
    } else if (scoring == "sigmoid") {
        c.scoring_func = ScoringFunc::sigmoid;
    } else {
        DSV2_FAIL(ConfigError, "[config] {}: field 'scoring_func': expected \"softmax\" or \"sigmoid\", found \"{}\"",
                  source, scoring);
    }
    c.aux_loss_alpha = get_or<double>(j, source, "aux_loss_alpha", 0.001);
    c.seq_aux = get_or<bool>(j, source, "seq_aux", true);
    c.hidden_act = get_or<std::string>(j, source, "hidden_act", "silu");
    c.max_position_embeddings = get<std::int64_t>(j, source, "max_position_embeddings");
    c.initializer_range = get_or<double>(j, source, "initializer_range", 0.02);
    c.rms_norm_eps = get_or<double>(j, source, "rms_norm_eps", 1e-6);
    c.bos_token_id = get_optional<std::int64_t>(j, source, "bos_token_id");
    c.eos_token_id = get_optional<std::int64_t>(j, source, "eos_token_id");
    c.pad_token_id = get_optional<std::int64_t>(j, source, "pad_token_id");
    c.tie_word_embeddings = get_or<bool>(j, source, "tie_word_embeddings", false);
    c.rope_theta = get_or<double>(j, source, "rope_theta", 10000.0);
    c.attention_bias = get_or<bool>(j, source, "attention_bias", false);
    c.attention_dropout = get_or<double>(j, source, "attention_dropout", 0.0);

    if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
        const std::string where = fmt::format("{}: rope_scaling", source);
        DSV2_CHECK(rs->is_object(), ConfigError, "[config] {}: field 'rope_scaling': expected an object or null, found {}",
                   source, rs->dump());
        auto kind = get_optional<std::string>(*rs, where, "type");
        if (!kind) kind = get_optional<std::string>(*rs, where, "rope_type");
        DSV2_CHECK(kind.has_value(), ConfigError, "[config] {}: missing field 'type' (or 'rope_type')", where);
        if (*kind == "yarn") {
            RopeScaling& r = c.rope_scaling;
            r.kind = RopeScalingKind::yarn;
            r.factor = get<double>(*rs, where, "factor");
            r.original_max_position_embeddings = get_or<std::int64_t>(*rs, where, "original_max_position_embeddings", 4096);
            r.beta_fast = get_or<double>(*rs, where, "beta_fast", 32.0);
            r.beta_slow = get_or<double>(*rs, where, "beta_slow", 1.0);
            r.mscale = get_or<double>(*rs, where, "mscale", 1.0);
            r.mscale_all_dim = get_or<double>(*rs, where, "mscale_all_dim", 0.0);
        } else if (*kind != "default") {
            DSV2_FAIL(Unsupported, "[config] {}: field 'type': rope scaling \"{}\" is not supported (supported: \"yarn\")",
                      where, *kind);
        }
    }
    c.validate(source);
    return c;
}

inline Config load_config(const std::filesystem::path& path) {
    std::ifstream in(path);
    DSV2_CHECK(in.good(), ConfigError, "[config] {}: cannot open file", path.string());
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
        DSV2_FAIL(ConfigError, "[config] {}: malformed JSON: {}", path.string(), e.what());
    }
    return config_from_json(j, path.string());
}

inline nlohmann::json to_json(const Config& c) {
    nlohmann::json j;
    j["architectures"] = {"DeepseekV2ForCausalLM"};
    j["model_type"] = "deepseek_v2";
    j["vocab_size"] = c.vocab_size;
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["n_shared_experts"] = c.n_shared_experts;
    j["n_routed_experts"] = c.n_routed_experts;
    j["ep_size"] = c.ep_size;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["q_lora_rank"] = c.q_lora_rank ? nlohmann::json(*c.q_lora_rank) : nlohmann::json(nullptr);
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["topk_method"] = std::string(to_string(c.topk_method));
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_layer_freq"] = c.moe_layer_freq;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["scoring_func"] = c.scoring_func == ScoringFunc::softmax ? "softmax" : "sigmoid";
    j["aux_loss_alpha"] = c.aux_loss_alpha;
    j["seq_aux"] = c.seq_aux;
    j["hidden_act"] = c.hidden_act;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["initializer_range"] = c.initializer_range;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["use_cache"] = true;
    j["bos_token_id"] = c.bos_token_id ? nlohmann::json(*c.bos_token_id) : nlohmann::json(nullptr);
    j["eos_token_id"] = c.eos_token_id ? nlohmann::json(*c.eos_token_id) : nlohmann::json(nullptr);
    if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["rope_theta"] = c.rope_theta;
    if (c.rope_scaling.kind == RopeScalingKind::yarn) {
        const auto& r = c.rope_scaling;
        j["rope_scaling"] = {{"type", "yarn"},
                             {"factor", r.factor},
                             {"original_max_position_embeddings", r.original_max_position_embeddings},
                             {"beta_fast", r.beta_fast},
                             {"beta_slow", r.beta_slow},
                             {"mscale", r.mscale},
                             {"mscale_all_dim", r.mscale_all_dim}};
    } else {
        j["rope_scaling"] = nullptr;
    }
    j["attention_bias"] = c.attention_bias;
    j["attention_dropout"] = c.attention_dropout;
    return j;
}

inline void Config::validate(std::string_view source) const {
    auto positive = [&](std::int64_t v, const char* field) {
        DSV2_CHECK(v > 0, ConfigError, "[config] {}: field '{}': expected a positive integer, found {}", source, field, v);
    };
    positive(vocab_size, "vocab_size");
    positive(hidden_size, "hidden_size");
    positive(num_hidden_layers, "num_hidden_layers");
    positive(num_attention_heads, "num_attention_heads");
    positive(kv_lora_rank, "kv_lora_rank");
    positive(qk_nope_head_dim, "qk_nope_head_dim");
    positive(v_head_dim, "v_head_dim");
    positive(max_position_embeddings, "max_position_embeddings");
    DSV2_CHECK(qk_rope_head_dim > 0 && qk_rope_head_dim % 2 == 0, ConfigError,
               "[config] {}: field 'qk_rope_head_dim': expected a positive even integer, found {}", source,
               qk_rope_head_dim);
    if (q_lora_rank) positive(*q_lora_rank, "q_lora_rank");
    // Upper bounds, far above any published model, so that a hostile or
    // mistyped config is named here rather than failing later as an int64
    // overflow, a loop over 2^62 layers or std::bad_alloc.
    auto at_most = [&](std::int64_t v, std::int64_t limit, const char* field) {
        DSV2_CHECK(v <= limit, ConfigError, "[config] {}: field '{}': {} is above this library's limit of {}", source,
                   field, v, limit);
    };
    constexpr std::int64_t max_width = std::int64_t{1} << 20, max_count = std::int64_t{1} << 16;
    at_most(vocab_size, std::int64_t{1} << 24, "vocab_size");
    at_most(hidden_size, max_width, "hidden_size");
    at_most(intermediate_size, max_width, "intermediate_size");
    at_most(moe_intermediate_size, max_width, "moe_intermediate_size");
    at_most(kv_lora_rank, max_width, "kv_lora_rank");
    if (q_lora_rank) at_most(*q_lora_rank, max_width, "q_lora_rank");
    at_most(qk_nope_head_dim, max_width, "qk_nope_head_dim");
    at_most(qk_rope_head_dim, max_width, "qk_rope_head_dim");
    at_most(v_head_dim, max_width, "v_head_dim");
    at_most(num_hidden_layers, max_count, "num_hidden_layers");
    at_most(num_attention_heads, max_count, "num_attention_heads");
    at_most(n_routed_experts, max_count, "n_routed_experts");
    at_most(n_shared_experts, max_count, "n_shared_experts");
    at_most(max_position_embeddings, std::int64_t{1} << 30, "max_position_embeddings");
    {
        // Parameters, in double so that the estimate itself cannot overflow:
        // every tensor the config implies must be addressable with int64.
        const double d = static_cast<double>(hidden_size), h = static_cast<double>(num_attention_heads);
        const double qk = static_cast<double>(qk_nope_head_dim + qk_rope_head_dim);
        const double q = q_lora_rank ? d * static_cast<double>(*q_lora_rank) + static_cast<double>(*q_lora_rank) * h * qk
                                     : h * qk * d;
        const double attn = q + static_cast<double>(kv_lora_rank + qk_rope_head_dim) * d +
                            h * static_cast<double>(qk_nope_head_dim + v_head_dim) * static_cast<double>(kv_lora_rank) +
                            d * h * static_cast<double>(v_head_dim);
        const double mlp = 3 * d *
                               std::max<double>(static_cast<double>(std::max<std::int64_t>(intermediate_size, 0)),
                                                static_cast<double>(std::max<std::int64_t>(moe_intermediate_size, 0)) *
                                                    static_cast<double>(std::max<std::int64_t>(n_routed_experts, 0) +
                                                                        std::max<std::int64_t>(n_shared_experts, 0))) +
                           static_cast<double>(std::max<std::int64_t>(n_routed_experts, 0)) * d;
        const double total = 2 * static_cast<double>(vocab_size) * d + static_cast<double>(num_hidden_layers) * (attn + mlp);
        constexpr double max_params = 1e15;
        DSV2_CHECK(total <= max_params, ConfigError,
                   "[config] {}: these sizes imply about {:.3g} parameters, above this library's limit of {:.0e}", source,
                   total, max_params);
    }
    DSV2_CHECK(hidden_act == "silu", Unsupported, "[config] {}: field 'hidden_act': only \"silu\" is supported, found \"{}\"",
               source, hidden_act);
    DSV2_CHECK(!attention_bias, Unsupported, "[config] {}: field 'attention_bias': true is not supported", source);
    DSV2_CHECK(!tie_word_embeddings, Unsupported,
               "[config] {}: field 'tie_word_embeddings': true is not supported (DeepSeek-V2 unties lm_head)", source);
    DSV2_CHECK(rms_norm_eps > 0, ConfigError, "[config] {}: field 'rms_norm_eps': expected > 0, found {}", source,
               rms_norm_eps);
    DSV2_CHECK(rope_theta > 1, ConfigError, "[config] {}: field 'rope_theta': expected > 1, found {}", source, rope_theta);
    DSV2_CHECK(n_routed_experts >= 0, ConfigError, "[config] {}: field 'n_routed_experts': expected >= 0, found {}",
               source, n_routed_experts);
    if (n_routed_experts > 0) {
        positive(moe_intermediate_size, "moe_intermediate_size");
        positive(moe_layer_freq, "moe_layer_freq");
        DSV2_CHECK(first_k_dense_replace >= 0, ConfigError,
                   "[config] {}: field 'first_k_dense_replace': expected >= 0, found {}", source, first_k_dense_replace);
        DSV2_CHECK(n_shared_experts >= 0, ConfigError, "[config] {}: field 'n_shared_experts': expected >= 0, found {}",
                   source, n_shared_experts);
        DSV2_CHECK(num_experts_per_tok >= 1 && num_experts_per_tok <= n_routed_experts, ConfigError,
                   "[config] {}: field 'num_experts_per_tok': expected 1..n_routed_experts ({}), found {}", source,
                   n_routed_experts, num_experts_per_tok);
        DSV2_CHECK(routed_scaling_factor > 0, ConfigError,
                   "[config] {}: field 'routed_scaling_factor': expected > 0, found {}", source, routed_scaling_factor);
        if (topk_method != TopkMethod::greedy) {
            DSV2_CHECK(n_group >= 1 && n_routed_experts % n_group == 0, ConfigError,
                       "[config] {}: field 'n_group': expected a divisor of n_routed_experts ({}), found {}", source,
                       n_routed_experts, n_group);
            DSV2_CHECK(topk_group >= 1 && topk_group <= n_group, ConfigError,
                       "[config] {}: field 'topk_group': expected 1..n_group ({}), found {}", source, n_group, topk_group);
            DSV2_CHECK(num_experts_per_tok <= topk_group * (n_routed_experts / n_group), ConfigError,
                       "[config] {}: field 'num_experts_per_tok': {} experts cannot be chosen from {} groups of {}",
                       source, num_experts_per_tok, topk_group, n_routed_experts / n_group);
        }
        DSV2_CHECK((topk_method == TopkMethod::noaux_tc) == (scoring_func == ScoringFunc::sigmoid), Unsupported,
                   "[config] {}: field 'scoring_func': \"{}\" routing needs scoring_func \"{}\"", source,
                   to_string(topk_method), topk_method == TopkMethod::noaux_tc ? "sigmoid" : "softmax");
    }
    // After moe_layer_freq is known to be positive: is_moe_layer divides by it.
    bool any_dense = false;
    for (std::int64_t i = 0; i < num_hidden_layers; ++i) any_dense = any_dense || !is_moe_layer(i);
    if (any_dense) positive(intermediate_size, "intermediate_size");
    if (rope_scaling.kind == RopeScalingKind::yarn) {
        DSV2_CHECK(rope_scaling.factor > 0, ConfigError, "[config] {}: field 'rope_scaling.factor': expected > 0, found {}",
                   source, rope_scaling.factor);
        DSV2_CHECK(rope_scaling.original_max_position_embeddings > 0, ConfigError,
                   "[config] {}: field 'rope_scaling.original_max_position_embeddings': expected > 0, found {}", source,
                   rope_scaling.original_max_position_embeddings);
        DSV2_CHECK(rope_scaling.beta_fast > 0 && rope_scaling.beta_slow > 0, ConfigError,
                   "[config] {}: fields 'rope_scaling.beta_fast/beta_slow': expected > 0, found {} / {}", source,
                   rope_scaling.beta_fast, rope_scaling.beta_slow);
    }
    const double rotary = rotary_mscale(), scale = softmax_scale();
    DSV2_CHECK(std::isfinite(rotary) && rotary > 0 && std::isfinite(scale) && scale > 0, ConfigError,
               "[config] {}: rope_scaling mscale / mscale_all_dim give a rotary scale of {} and a softmax scale of {}; "
               "both must be finite and positive",
               source, rotary, scale);
}

inline Config Config::deepseek_v2() {
    Config c;
    c.vocab_size = 102400;
    c.hidden_size = 5120;
    c.intermediate_size = 12288;
    c.moe_intermediate_size = 1536;
    c.num_hidden_layers = 60;
    c.num_attention_heads = 128;
    c.num_key_value_heads = 128;
    c.n_shared_experts = 2;
    c.n_routed_experts = 160;
    c.routed_scaling_factor = 16.0;
    c.kv_lora_rank = 512;
    c.q_lora_rank = 1536;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.qk_nope_head_dim = 128;
    c.topk_method = TopkMethod::group_limited_greedy;
    c.n_group = 8;
    c.topk_group = 3;
    c.num_experts_per_tok = 6;
    c.moe_layer_freq = 1;
    c.first_k_dense_replace = 1;
    c.norm_topk_prob = false;
    c.aux_loss_alpha = 0.003;
    c.max_position_embeddings = 163840;
    c.rms_norm_eps = 1e-6;
    c.bos_token_id = 100000;
    c.eos_token_id = 100001;
    c.rope_theta = 10000;
    c.rope_scaling = {RopeScalingKind::yarn, 40.0, 4096, 32.0, 1.0, 0.707, 0.707};
    return c;
}

inline Config Config::deepseek_v2_lite() {
    Config c = deepseek_v2();
    c.hidden_size = 2048;
    c.intermediate_size = 10944;
    c.moe_intermediate_size = 1408;
    c.num_hidden_layers = 27;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 16;
    c.n_routed_experts = 64;
    c.routed_scaling_factor = 1.0;
    c.q_lora_rank = std::nullopt;
    c.topk_method = TopkMethod::greedy;
    c.n_group = 1;
    c.topk_group = 1;
    c.aux_loss_alpha = 0.001;
    return c;
}

inline Config Config::tiny() {
    Config c = deepseek_v2();
    c.vocab_size = 256;
    c.hidden_size = 64;
    c.intermediate_size = 160;
    c.moe_intermediate_size = 32;
    c.num_hidden_layers = 3;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 4;
    c.n_shared_experts = 2;
    c.n_routed_experts = 16;
    c.routed_scaling_factor = 2.0;
    c.kv_lora_rank = 32;
    c.q_lora_rank = 48;
    c.qk_rope_head_dim = 16;
    c.v_head_dim = 16;
    c.qk_nope_head_dim = 16;
    c.n_group = 4;
    c.topk_group = 2;
    c.num_experts_per_tok = 4;
    c.max_position_embeddings = 1024;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.rope_scaling = {RopeScalingKind::yarn, 4.0, 256, 32.0, 1.0, 0.707, 0.707};
    return c;
}

}  // namespace dsv2
