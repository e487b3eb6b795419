// Generation: prefill several prompts in one step, then decode them together,
// one token per live sequence per step, over the session's paged latent
// cache, until each hits its token budget or the end-of-sequence id.
#pragma once

#include "dsv2/model/model.hpp"
#include "dsv2/model/sampler.hpp"

#include <chrono>
#include <functional>
#include <optional>

namespace dsv2 {

struct GenerateOptions {
    std::int64_t max_new_tokens = 64;
    SamplerOptions sampling;
    std::optional<std::int32_t> eos;  // stop a sequence when it emits this id
};

struct GenerateResult {
    std::vector<std::vector<std::int32_t>> tokens;  // new tokens per prompt
    std::int64_t prefill_tokens = 0, decode_tokens = 0;
    double prefill_seconds = 0, decode_seconds = 0;
    std::int64_t cache_bytes = 0;  // latent-cache pages held at the end
};

// `on_token(prompt index, token)` is called as each token is chosen.
template <class T, class B, class Attn>
GenerateResult generate(Context<B>& ctx, const Model<T, B, Attn>& model, Session<T, B, Attn>& session,
                        const std::vector<std::vector<std::int32_t>>& prompts, const GenerateOptions& opt,
                        const std::function<void(std::size_t, std::int32_t)>& on_token = {}) {
    DSV2_CHECK(!prompts.empty(), RangeError, "[generate] no prompts");
    DSV2_CHECK(opt.max_new_tokens >= 0, RangeError, "[generate] max_new_tokens: expected >= 0, found {}", opt.max_new_tokens);
    using clock = std::chrono::steady_clock;
    using A = acc_t<T>;
    GenerateResult r;
    r.tokens.resize(prompts.size());
    std::vector<std::int64_t> seqs;
    std::vector<Sampler> samplers;
    for (std::size_t p = 0; p < prompts.size(); ++p) {
        seqs.push_back(session.cache.add_sequence());
        SamplerOptions s = opt.sampling;
        s.seed += p;  // independent streams, reproducible per prompt
        samplers.emplace_back(s);
    }
    struct Release {  // the sequences are the caller's only for this call
        Session<T, B, Attn>& s;
        std::vector<std::int64_t>& ids;
        ~Release() {
            for (auto id : ids) s.cache.free(id);
        }
    } release{session, seqs};

    std::vector<SequenceTokens> batch;
    std::vector<std::size_t> live;  // prompt index of each batch row
    for (std::size_t p = 0; p < prompts.size(); ++p) {
        batch.push_back({seqs[p], prompts[p]});
        live.push_back(p);
        r.prefill_tokens += std::ssize(prompts[p]);
    }
    std::vector<std::int32_t> next(prompts.size());
    auto t0 = clock::now();
    bool prefill = true;
    while (!batch.empty() && opt.max_new_tokens > 0) {
        const auto logits = model.forward(ctx, session, batch, Logits::last);
        std::vector<A> row(static_cast<std::size_t>(logits.shape[1]));
        std::vector<SequenceTokens> again;
        std::vector<std::size_t> still;
        for (std::size_t b = 0; b < live.size(); ++b) {
            const std::size_t p = live[b];
            copy_to_host(ctx, logits[static_cast<std::int64_t>(b)].data, row.data(), std::ssize(row));
            next[p] = samplers[p](std::span<const A>(row));
            r.tokens[p].push_back(next[p]);
            if (on_token) on_token(p, next[p]);
            const bool done = std::ssize(r.tokens[p]) >= opt.max_new_tokens || (opt.eos && next[p] == *opt.eos) ||
                              session.cache.length(seqs[p]) >= model.config.max_position_embeddings;
            if (!done) {
                again.push_back({seqs[p], std::span(&next[p], 1)});
                still.push_back(p);
            }
        }
        const auto t1 = clock::now();
        (prefill ? r.prefill_seconds : r.decode_seconds) += std::chrono::duration<double>(t1 - t0).count();
        if (!prefill) r.decode_tokens += std::ssize(live);
        prefill = false;
        t0 = t1;
        batch = std::move(again);
        live = std::move(still);
    }
    r.cache_bytes = session.cache.bytes_in_use();
    return r;
}

}  // namespace dsv2
