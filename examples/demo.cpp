// The quick-start demo: builds the tiny preset (every DeepSeek-V2 feature on:
// q_lora, YaRN, group-limited routing, shared experts, a dense first layer)
// with seeded random weights, prefills two prompts together over the paged
// latent cache, decodes a few greedy steps, and prints what it computed.
#include <dsv2/dsv2.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

int main() try {
    using Model = dsv2::Model<float, dsv2::cpu>;
    dsv2::Context<dsv2::cpu> ctx;
    const dsv2::Config cfg = dsv2::Config::tiny();

    Model model(ctx, cfg);
    dsv2::init_random(ctx, model, /*seed=*/42);

    const auto params = dsv2::count_params(cfg);
    fmt::print("dsv2 demo: tiny DeepSeek-V2 preset with seeded random weights (threads: {})\n", ctx.threads);
    fmt::print("  hidden {}, layers {} ({} MoE), heads {}, kv_lora_rank {}, rope dim {}, experts {} routed + {} shared, top-{}\n",
               cfg.hidden_size, cfg.num_hidden_layers,
               std::count_if(model.layers.begin(), model.layers.end(), [](auto& l) { return l.is_moe(); }),
               cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.n_routed_experts,
               cfg.n_shared_experts, cfg.num_experts_per_tok);
    fmt::print("  parameters: {} total, {} activated per token\n", params.total, params.activated);

    auto session = model.new_session(ctx, /*max_tokens=*/512, /*max_sequences=*/4, /*page_size=*/16);
    const auto kv = dsv2::kv_cache_values_per_token(cfg);
    fmt::print("  latent cache: {} values per token per layer, {} bytes per token (MHA would need {})\n",
               cfg.latent_dim(), session.cache.bytes_per_token(), kv.mha * static_cast<std::int64_t>(sizeof(float)));

    std::vector<std::vector<std::int32_t>> prompts = {{1, 17, 42, 99, 7, 3}, {1, 200, 5}};
    std::vector<std::int64_t> seqs;
    std::vector<dsv2::SequenceTokens> batch;
    for (const auto& p : prompts) {
        seqs.push_back(session.cache.add_sequence());
        batch.push_back({seqs.back(), p});
    }

    const auto t0 = std::chrono::steady_clock::now();
    auto logits = model.forward(ctx, session, batch, dsv2::Logits::last);
    fmt::print("\nprefill: {} sequences, {} + {} tokens -> logits ({}, {})\n", batch.size(), prompts[0].size(),
               prompts[1].size(), logits.shape[0], logits.shape[1]);
    for (std::int64_t b = 0; b < logits.shape[0]; ++b) {
        fmt::print("  sequence {}: first logits [{:.4f}, {:.4f}, {:.4f}, {:.4f}]\n", b, logits(b, 0), logits(b, 1),
                   logits(b, 2), logits(b, 3));
    }

    std::vector<std::vector<std::int32_t>> generated(prompts.size());
    constexpr int kSteps = 8;
    for (int step = 0; step < kSteps; ++step) {
        std::vector<std::int32_t> next(prompts.size());
        for (std::size_t b = 0; b < prompts.size(); ++b) {
            const float* row = &logits(static_cast<std::int64_t>(b), 0);
            next[b] = static_cast<std::int32_t>(std::max_element(row, row + cfg.vocab_size) - row);
            generated[b].push_back(next[b]);
        }
        for (std::size_t b = 0; b < prompts.size(); ++b) batch[b] = {seqs[b], std::span(&next[b], 1)};
        logits = model.forward(ctx, session, batch, dsv2::Logits::last);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("\ngreedy decode, {} steps per sequence:\n", kSteps);
    for (std::size_t b = 0; b < prompts.size(); ++b) {
        fmt::print("  sequence {}: prompt [{}] -> [{}] (cache length {})\n", b, fmt::join(prompts[b], ", "),
                   fmt::join(generated[b], ", "), session.cache.length(seqs[b]));
    }
    fmt::print("\ncache in use: {} bytes in {} of {} pages; total time {:.3f} s\n", session.cache.bytes_in_use(),
               session.cache.n_pages() - session.cache.free_page_count(), session.cache.n_pages(), seconds);
    return 0;
} catch (const std::exception& e) {
    fmt::print(stderr, "dsv2 demo: {}\n", e.what());
    return 1;
}
