// Parameter counts from the config alone (no weights needed, so the 236B
// preset can be counted on a laptop). "Activated" is what one token touches:
// attention, dense MLPs, router, shared experts, its K routed experts, the
// norms and the LM head — not the embedding table, of which it reads one
// row. That is the convention of the paper's 21B / 2.4B figures.
#pragma once

#include "dsv2/model/config.hpp"

namespace dsv2 {

struct ParamCounts {
    std::int64_t total = 0;
    std::int64_t activated = 0;
    std::int64_t embedding = 0;  // counted in total, not in activated
};

inline std::int64_t attention_params(const Config& c) {
    const std::int64_t d = c.hidden_size, h = c.num_attention_heads;
    const std::int64_t q = c.q_lora_rank ? *c.q_lora_rank * d + *c.q_lora_rank + h * c.q_head_dim() * *c.q_lora_rank
                                         : h * c.q_head_dim() * d;
    return q + c.latent_dim() * d + c.kv_lora_rank + h * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank +
           d * h * c.v_head_dim;
}

inline ParamCounts count_params(const Config& c) {
    const std::int64_t d = c.hidden_size;
    ParamCounts p;
    p.embedding = c.vocab_size * d;
    const std::int64_t head = c.vocab_size * d + d;  // lm_head + final norm
    p.total = p.embedding + head;
    p.activated = head;
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
        const std::int64_t common = attention_params(c) + 2 * d;  // + the two norms
        p.total += common;
        p.activated += common;
        if (c.is_moe_layer(i)) {
            const std::int64_t expert = 3 * d * c.moe_intermediate_size;
            const std::int64_t gate = c.n_routed_experts * d + (c.topk_method == TopkMethod::noaux_tc ? c.n_routed_experts : 0);
            const std::int64_t shared = 3 * d * c.shared_intermediate_size();
            p.total += gate + shared + c.n_routed_experts * expert;
            p.activated += gate + shared + c.num_experts_per_tok * expert;
        } else {
            p.total += 3 * d * c.intermediate_size;
            p.activated += 3 * d * c.intermediate_size;
        }
    }
    return p;
}

// KV-cache values per token for the attention variants of the paper's
// Table 1, at this config's shape (d_h = the value head dim).
struct KvCacheSizes {
    std::int64_t mha = 0;  // 2 n_h d_h l
    std::int64_t gqa = 0;  // 2 n_g d_h l, for the given number of groups
    std::int64_t mqa = 0;  // 2 d_h l
    std::int64_t mla = 0;  // (d_c + d_h^R) l
};

inline KvCacheSizes kv_cache_values_per_token(const Config& c, std::int64_t gqa_groups = 8) {
    const std::int64_t l = c.num_hidden_layers, dh = c.v_head_dim;
    return {2 * c.num_attention_heads * dh * l, 2 * gqa_groups * dh * l, 2 * dh * l, c.latent_dim() * l};
}

}  // namespace dsv2
