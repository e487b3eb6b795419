// The paged K/V cache of the classic attentions (MHA, GQA, MQA): per token
// and layer it holds the keys and values of the Hk key/value heads,
//     row = [k_0 | k_1 | ... | k_{Hk-1} | v_0 | ... | v_{Hk-1}]
// Hk * (Dk + Dv) values in T (Dk = Dn + Dr, the rope lanes already rotated).
// That is the paper's Table 1 numerator: 2·n_h·d_h per layer for MHA,
// 2·n_g·d_h for GQA, 2·d_h for MQA (with Dk = Dv = d_h).
//
// Paging, block tables, append/truncate/free and byte accounting are
// LatentCache's, which is generic over the row width: this type adds only
// the layout (head counts and dims) and how to size itself from a config.
#pragma once

#include "dsv2/layers/latent_cache.hpp"

#include <algorithm>

namespace dsv2 {

template <class T, class B>
class KVCache : public LatentCache<T, B> {
public:
    KVCache() = default;
    KVCache(Context<B>& ctx, std::int64_t n_layers, std::int64_t kv_heads, std::int64_t k_dim, std::int64_t v_dim,
            std::int64_t page_size, std::int64_t n_pages, std::int64_t max_sequences)
        : LatentCache<T, B>(ctx, n_layers, checked_width(kv_heads, k_dim, v_dim), page_size, n_pages, max_sequences),
          kv_heads_(kv_heads), k_dim_(k_dim), v_dim_(v_dim) {}

    // Same sizing rule as LatentCache::for_config: `max_tokens` in total over
    // up to `max_sequences` sequences always fit.
    static KVCache for_config(Context<B>& ctx, const Config& cfg, std::int64_t max_tokens,
                              std::int64_t max_sequences = 16, std::int64_t page_size = 64) {
        DSV2_CHECK(max_tokens >= 0 && max_tokens <= (std::int64_t{1} << 40) && page_size > 0, RangeError,
                   "[kv cache] max_tokens {}, page size {}: invalid (max_tokens must be 0..2^40, page size positive)",
                   max_tokens, page_size);
        const std::int64_t slack = std::max<std::int64_t>(0, std::min(max_sequences, max_tokens) - 1);
        // Written so that no sum can overflow for any max_tokens.
        const std::int64_t pages =
            std::max<std::int64_t>(1, max_tokens / page_size + (max_tokens % page_size != 0) + slack);
        return KVCache(ctx, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.q_head_dim(), cfg.v_head_dim,
                       page_size, pages, max_sequences);
    }

    std::int64_t kv_heads() const { return kv_heads_; }  // Hk
    std::int64_t k_dim() const { return k_dim_; }        // Dk = Dn + Dr
    std::int64_t v_dim() const { return v_dim_; }        // Dv
    // Column where the values start in a row.
    std::int64_t v_offset() const { return kv_heads_ * k_dim_; }

private:
    static std::int64_t checked_width(std::int64_t kv_heads, std::int64_t k_dim, std::int64_t v_dim) {
        DSV2_CHECK(kv_heads > 0 && k_dim > 0 && v_dim > 0 && kv_heads <= (std::int64_t{1} << 20) &&
                       k_dim <= (std::int64_t{1} << 20) && v_dim <= (std::int64_t{1} << 20),
                   RangeError, "[kv cache] kv heads {}, key dim {}, value dim {}: each must be in 1..2^20", kv_heads,
                   k_dim, v_dim);
        return kv_heads * (k_dim + v_dim);
    }

    std::int64_t kv_heads_ = 0, k_dim_ = 0, v_dim_ = 0;
};

}  // namespace dsv2
