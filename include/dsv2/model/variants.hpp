// Attention variants chosen at run time, for tools (examples/variant_study,
// anything reading a study config). At compile time a variant is a type:
// Model<T, B> (MLA), Model<T, B, GQA<T, B>> (MHA/GQA/MQA by
// num_key_value_heads). At run time it is an AttentionKind plus a Config,
// and AnyModel holds whichever model that names.
//
// DeepSeek-V2's config.json has no field naming the attention; the kind is
// the tool's choice, and for GQA the number of key/value heads comes from
// the config's num_key_value_heads (which MLA ignores).
#pragma once

#include "dsv2/layers/gqa.hpp"
#include "dsv2/model/model.hpp"

#include <string>
#include <string_view>
#include <variant>

namespace dsv2 {

enum class AttentionKind { mla, mha, gqa, mqa };

inline std::string_view to_string(AttentionKind k) {
    switch (k) {
        case AttentionKind::mla: return "MLA";
        case AttentionKind::mha: return "MHA";
        case AttentionKind::gqa: return "GQA";
        case AttentionKind::mqa: return "MQA";
    }
    return "?";
}

inline AttentionKind attention_kind_from_string(std::string_view s) {
    if (s == "mla" || s == "MLA") return AttentionKind::mla;
    if (s == "mha" || s == "MHA") return AttentionKind::mha;
    if (s == "gqa" || s == "GQA") return AttentionKind::gqa;
    if (s == "mqa" || s == "MQA") return AttentionKind::mqa;
    DSV2_FAIL(ConfigError, "[variants] attention type \"{}\": expected one of mla, mha, gqa, mqa", s);
}

// A study config is an HF config.json object with an optional
// "attention_type" key (mla, mha, gqa, mqa); absent or null means MLA, so a
// DeepSeek-V2 config reads as itself.
inline AttentionKind attention_kind_from_json(const nlohmann::json& j, std::string_view source = "config.json") {
    const auto it = j.find("attention_type");
    if (it == j.end() || it->is_null()) return AttentionKind::mla;
    DSV2_CHECK(it->is_string(), ConfigError, "[config] {}: field 'attention_type': expected a string, found {}", source,
               it->dump());
    return attention_kind_from_string(it->template get<std::string>());
}

// The config a kind runs with: MHA sets num_key_value_heads to the head
// count and MQA to 1; GQA keeps the config's value (`kv_heads` overrides it
// when positive); MLA leaves the config as it is.
inline Config attention_variant_config(Config cfg, AttentionKind kind, std::int64_t kv_heads = 0) {
    switch (kind) {
        case AttentionKind::mla: break;
        case AttentionKind::mha: cfg.num_key_value_heads = cfg.num_attention_heads; break;
        case AttentionKind::mqa: cfg.num_key_value_heads = 1; break;
        case AttentionKind::gqa:
            if (kv_heads > 0) cfg.num_key_value_heads = kv_heads;
            break;
    }
    if (kind != AttentionKind::mla) {
        DSV2_CHECK(cfg.num_key_value_heads > 0 && cfg.num_attention_heads % cfg.num_key_value_heads == 0, ConfigError,
                   "[variants] {}: num_key_value_heads {} must divide num_attention_heads {}", to_string(kind),
                   cfg.num_key_value_heads, cfg.num_attention_heads);
    }
    return cfg;
}

// Either model; visit it with std::visit or the helpers below.
template <class T, class B>
using AnyModel = std::variant<Model<T, B, MLA<T, B>>, Model<T, B, GQA<T, B>>>;

template <class T, class B>
AnyModel<T, B> make_model(Context<B>& ctx, const Config& cfg, AttentionKind kind, std::int64_t kv_heads = 0) {
    const Config c = attention_variant_config(cfg, kind, kv_heads);
    if (kind == AttentionKind::mla) return AnyModel<T, B>(std::in_place_index<0>, ctx, c);
    return AnyModel<T, B>(std::in_place_index<1>, ctx, c);
}

// Number of parameters of any module with for_each_weight, counted from its
// tensors (so it holds for any attention or MoE variant).
template <class Module>
std::int64_t count_weights(Module& module, std::string_view name_contains = "") {
    std::int64_t n = 0;
    module.for_each_weight([&](const std::string& name, auto& t) {
        if (name_contains.empty() || name.find(name_contains) != std::string::npos) n += t.numel();
    });
    return n;
}

}  // namespace dsv2
