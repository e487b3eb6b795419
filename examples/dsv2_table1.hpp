// `dsv2 bench --table1`: the paper's Table 1 (KV cache per token for MHA,
// GQA, MQA and MLA) from the library's own numbers at the DeepSeek-V2 and
// V2-Lite shapes, plus the memory of a bf16 latent cache allocated to hold
// 128K tokens: its allocation, and for V2-Lite the resident memory measured
// after every page has been written.
#pragma once

#include <dsv2/dsv2.hpp>

#include <fmt/format.h>

#include <fstream>
#include <string>

namespace dsv2_bench {

// Resident set size now (not the peak), from /proc/self/statm.
inline std::int64_t current_rss_bytes() {
    std::ifstream in("/proc/self/statm");
    std::int64_t pages_total = 0, pages_resident = 0;
    in >> pages_total >> pages_resident;
    return pages_resident * 4096;
}

inline int cmd_table1() {
    constexpr std::int64_t kTokens = 128 * 1024;
    dsv2::Context<dsv2::cpu> ctx;
    for (const auto& [name, cfg] : {std::pair{"DeepSeek-V2", dsv2::Config::deepseek_v2()},
                                    std::pair{"DeepSeek-V2-Lite", dsv2::Config::deepseek_v2_lite()}}) {
        const std::int64_t groups = 8;
        const auto kv = dsv2::kv_cache_values_per_token(cfg, groups);
        fmt::print("{}: {} layers, {} heads, d_h {}, d_c {}, d_h^R {}\n", name, cfg.num_hidden_layers,
                   cfg.num_attention_heads, cfg.v_head_dim, cfg.kv_lora_rank, cfg.qk_rope_head_dim);
        fmt::print("  {:<20} {:>12} {:>12} {:>9}\n", "attention", "values/tok", "bf16 B/tok", "vs MHA");
        auto row = [&](const std::string& what, std::int64_t v) {
            fmt::print("  {:<20} {:>12} {:>12} {:>8.2f}%\n", what, v, 2 * v,
                       100.0 * static_cast<double>(v) / static_cast<double>(kv.mha));
        };
        row(fmt::format("MHA ({} heads)", cfg.num_attention_heads), kv.mha);
        row(fmt::format("GQA ({} groups)", groups), kv.gqa);
        row("MQA", kv.mqa);
        row(fmt::format("MLA ({} + {})", cfg.kv_lora_rank, cfg.qk_rope_head_dim), kv.mla);

        const std::int64_t before = current_rss_bytes();
        auto cache = dsv2::LatentCache<dsv2::bf16, dsv2::cpu>::for_config(ctx, cfg, kTokens, 1);
        const bool touch = cfg.hidden_size <= 2048;  // V2's 9 GB is allocated, not written, on small machines
        std::int64_t resident = -1;
        if (touch) {
            auto pages = cache.layer(0);
            dsv2::Memory<dsv2::cpu>::zero(pages.data, static_cast<std::size_t>(cache.capacity_bytes()));
            resident = current_rss_bytes() - before;
        }
        fmt::print("  latent cache for {} tokens (bf16, pages of {}): {} bytes/token, {} tokens of capacity, "
                   "allocated {:.3f} GiB{}\n\n",
                   kTokens, cache.page_size(), cache.bytes_per_token(), cache.capacity_tokens(),
                   static_cast<double>(cache.capacity_bytes()) / (1 << 30),
                   resident >= 0 ? fmt::format(", resident after writing {:.3f} GiB",
                                               static_cast<double>(resident) / (1 << 30))
                                 : std::string());
    }
    return 0;
}

}  // namespace dsv2_bench
