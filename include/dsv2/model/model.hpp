// The DeepSeek-V2 causal language model: embedding, decoder layers, final
// norm and an untied LM head, over a batch of sequences that share one
// latent cache. Prefill and decode are the same call: a step appends each
// sequence's new tokens to the cache and attends over everything cached.
#pragma once

#include "dsv2/layers/decoder_layer.hpp"

#include <span>
#include <string>
#include <unordered_set>
#include <vector>

namespace dsv2 {

// The new tokens of one sequence in a step.
struct SequenceTokens {
    std::int64_t seq_id = 0;                // a sequence of the session's cache
    std::span<const std::int32_t> tokens;   // appended after what is cached
};

enum class Logits { all, last };  // every position, or each sequence's last

// Everything that changes while a model runs: the attention's cache (the
// latent cache for MLA) and scratch.
template <class T, class B, class Attn = MLA<T, B>>
struct Session {
    typename Attn::Cache cache;
    Workspace<B> ws;

    // `format`: how MLA's latent cache stores its rows (layers/latent_cache.hpp);
    // `automatic` is int8 rows for int8 weights on the CPU and dense rows
    // otherwise (resolve_latent_format). Other attentions keep theirs dense.
    Session(Context<B>& ctx, const Config& cfg, std::int64_t max_tokens, std::int64_t max_sequences = 16,
            std::int64_t page_size = 64, LatentFormat format = LatentFormat::automatic)
        : cache(make_cache(ctx, cfg, max_tokens, max_sequences, page_size, format)) {}

private:
    using Cache = typename Attn::Cache;
    static Cache make_cache(Context<B>& ctx, const Config& cfg, std::int64_t max_tokens, std::int64_t max_sequences,
                            std::int64_t page_size, LatentFormat format) {
        if constexpr (requires { Cache::for_config(ctx, cfg, max_tokens, max_sequences, page_size, format); }) {
            return Cache::for_config(ctx, cfg, max_tokens, max_sequences, page_size,
                                     resolve_latent_format<T, B>(format));
        } else {
            DSV2_CHECK(format != LatentFormat::int8, Unsupported,
                       "session: an int8 cache is MLA's latent cache; this attention keeps a dense one");
            return Cache::for_config(ctx, cfg, max_tokens, max_sequences, page_size);
        }
    }
};

// `Attn` is the self-attention of every layer: MLA (DeepSeek-V2) by default,
// or any type satisfying the Attention concept (layers/attention.hpp), e.g.
// GQA<T, B> for MHA/GQA/MQA baselines.
template <class T, class B, class Attn = MLA<T, B>>
class Model {
public:
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;
    using Cache = typename Attn::Cache;

    Config config;
    Tensor<dense_t<T>, B, 2> embed_tokens;  // (V, D)  model.embed_tokens.weight
    std::vector<DecoderLayer<T, B, Attn>> layers;
    RMSNorm<T, B> norm;                     // (D)     model.norm.weight
    Matrix<T, B> lm_head;                   // (V, D)  lm_head.weight
    Rotary<T, B> rotary;

    // Allocates every weight with its shape; values come from a checkpoint
    // (io/checkpoint.hpp) or init_random (model/random.hpp).
    Model(Context<B>& ctx, const Config& cfg)
        : config(cfg), embed_tokens({cfg.vocab_size, cfg.hidden_size}), norm(cfg.hidden_size, cfg.rms_norm_eps),
          lm_head({cfg.vocab_size, cfg.hidden_size}), rotary(ctx, cfg) {
        cfg.validate();
        layers.reserve(static_cast<std::size_t>(cfg.num_hidden_layers));
        for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) layers.emplace_back(cfg, i);
    }

    // Visits every weight with its Hugging Face name.
    template <class F>
    void for_each_weight(F&& f) {
        f(std::string("model.embed_tokens.weight"), embed_tokens);
        for (std::size_t i = 0; i < layers.size(); ++i) {
            const std::string prefix = "model.layers." + std::to_string(i) + ".";
            layers[i].for_each_weight([&](const std::string& name, auto& t) { f(prefix + name, t); });
        }
        f(std::string("model.norm.weight"), norm.weight);
        f(std::string("lm_head.weight"), lm_head);
    }

    void set_attention_path(AttentionPath p)
        requires std::is_same_v<Attn, MLA<T, B>>
    {
        for (auto& l : layers) l.self_attn.path = p;
    }

    Session<T, B, Attn> new_session(Context<B>& ctx, std::int64_t max_tokens, std::int64_t max_sequences = 16,
                                    std::int64_t page_size = 64,
                                    LatentFormat format = LatentFormat::automatic) const {
        return Session<T, B, Attn>(ctx, config, max_tokens, max_sequences, page_size, format);
    }

    // One step: appends each sequence's tokens to the cache and returns the
    // logits, (N, V) for Logits::all or (batch, V) for Logits::last, valid
    // until the session's next step. On any error the cache is left as it was.
    View<const A, B, 2> forward(Context<B>& ctx, Session<T, B, Attn>& session, std::span<const SequenceTokens> batch,
                                Logits which = Logits::all, std::vector<RoutingRecord>* records = nullptr) const {
        auto& cache = session.cache;
        validate_batch(cache, batch);
        std::vector<std::int64_t> lengths;
        for (const auto& s : batch) lengths.push_back(cache.length(s.seq_id));
        std::size_t appended = 0;
        try {
            for (; appended < batch.size(); ++appended) cache.append(batch[appended].seq_id, std::ssize(batch[appended].tokens));
            return run(ctx, session, batch, lengths, which, records);
        } catch (...) {
            for (std::size_t i = 0; i < appended; ++i) cache.truncate(batch[i].seq_id, lengths[i]);
            throw;
        }
    }

private:
    void validate_batch(const Cache& cache, std::span<const SequenceTokens> batch) const {
        DSV2_CHECK(!batch.empty(), RangeError, "[model] forward: the batch has no sequences");
        std::unordered_set<std::int64_t> seen;
        std::int64_t pages_needed = 0;
        for (const auto& s : batch) {
            DSV2_CHECK(cache.active(s.seq_id), RangeError, "[model] forward: sequence {} is not active in the cache",
                       s.seq_id);
            DSV2_CHECK(seen.insert(s.seq_id).second, RangeError, "[model] forward: sequence {} appears twice in one batch",
                       s.seq_id);
            DSV2_CHECK(!s.tokens.empty(), RangeError, "[model] forward: sequence {} has no tokens (empty prompt)", s.seq_id);
            for (std::size_t i = 0; i < s.tokens.size(); ++i) {
                DSV2_CHECK(s.tokens[i] >= 0 && s.tokens[i] < config.vocab_size, RangeError,
                           "[model] forward: sequence {}, token {}: id {} outside the vocabulary [0, {})", s.seq_id, i,
                           s.tokens[i], config.vocab_size);
            }
            const std::int64_t len = cache.length(s.seq_id), end = len + std::ssize(s.tokens);
            DSV2_CHECK(end <= config.max_position_embeddings, RangeError,
                       "[model] forward: sequence {} would reach {} tokens, past max_position_embeddings {}", s.seq_id,
                       end, config.max_position_embeddings);
            const std::int64_t ps = cache.page_size();
            pages_needed += (end + ps - 1) / ps - (len + ps - 1) / ps;
        }
        DSV2_CHECK(pages_needed <= cache.free_page_count(), RangeError,
                   "[model] forward: the batch needs {} more cache pages, {} of {} are free", pages_needed,
                   cache.free_page_count(), cache.n_pages());
    }

    View<const A, B, 2> run(Context<B>& ctx, Session<T, B, Attn>& session, std::span<const SequenceTokens> batch,
                            const std::vector<std::int64_t>& lengths, Logits which,
                            std::vector<RoutingRecord>* records) const {
        auto& ws = session.ws;
        auto& cache = session.cache;
        ws.reset();

        // Host description of the step, then its device copies.
        Step<A, B> step;
        std::vector<std::int32_t> tokens;
        std::vector<std::int64_t> positions, slots;
        for (std::size_t b = 0; b < batch.size(); ++b) {
            const auto& s = batch[b];
            const std::int64_t n = std::ssize(s.tokens);
            step.sequences.push_back({s.seq_id, std::ssize(tokens), n, lengths[b], cache.block_table(s.seq_id)});
            for (std::int64_t i = 0; i < n; ++i) {
                tokens.push_back(s.tokens[static_cast<std::size_t>(i)]);
                positions.push_back(lengths[b] + i);
                slots.push_back(cache.slot(s.seq_id, lengths[b] + i));
            }
        }
        const std::int64_t n = std::ssize(tokens), d = config.hidden_size, half = config.qk_rope_head_dim / 2;
        step.n_tokens = n;
        auto tok_dev = ws.template take<std::int32_t>(std::array{n});
        auto pos_dev = ws.template take<std::int64_t>(std::array{n});
        auto slot_dev = ws.template take<std::int64_t>(std::array{n});
        copy_to_device(ctx, tokens.data(), tok_dev.data, n);
        copy_to_device(ctx, positions.data(), pos_dev.data, n);
        copy_to_device(ctx, slots.data(), slot_dev.data, n);
        step.positions = cview(pos_dev);
        step.slots = cview(slot_dev);
        auto cos = ws.template take<A>(std::array{n, half});
        auto sin = ws.template take<A>(std::array{n, half});
        rotary.tables(ctx, step.positions, cos, sin);
        step.cos = cview(cos);
        step.sin = cview(sin);

        auto h = ws.template take<A>(std::array{n, d});  // the residual stream
        embedding(ctx, embed_tokens.cview(), cview(tok_dev), h);
        if (records) records->assign(layers.size(), RoutingRecord{});
        for (std::size_t l = 0; l < layers.size(); ++l) {
            layers[l].forward(ctx, ws, step, cache, static_cast<std::int64_t>(l), h,
                              records ? &(*records)[l] : nullptr);
        }

        View<A, B, 2> final_rows = h;
        if (which == Logits::last) {
            // Each sequence's last row, in batch order.
            std::vector<std::int32_t> last;
            for (const auto& s : step.sequences) last.push_back(static_cast<std::int32_t>(s.row_begin + s.n_tokens - 1));
            auto last_dev = ws.template take<std::int32_t>(std::array{std::ssize(last)});
            copy_to_device(ctx, last.data(), last_dev.data, std::ssize(last));
            final_rows = ws.template take<A>(std::array{std::ssize(last), d});
            gather_rows(ctx, cview(h), cview(last_dev), 1, final_rows);
        }
        norm.forward(ctx, cview(final_rows), final_rows);
        auto logits = ws.template take<A>(std::array{final_rows.shape[0], config.vocab_size});
        linear(ctx, cview(final_rows), lm_head.cview(), logits);
        return cview(logits);
    }
};

}  // namespace dsv2
