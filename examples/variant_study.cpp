// variant_study: the paper's attention comparison (Table 1 and Appendix D)
// and a DeepSeekMoE comparison, measured with the library on this machine.
//
// Attention table: models of equal hidden size and depth with MHA, GQA,
// MQA and MLA (seeded random weights), their parameters, KV-cache bytes
// per token from the caches' own accounting (the paper's Table 1), and
// measured single-sequence decode tokens/s and cache memory at each
// context. The context is filled by writing cache rows directly (decode
// speed depends on the cache's size, not its values), so a 32K context
// costs no 32K-token prefill. Every time is the best of several runs (one
// decode step; one MoE forward): on a shared machine the best run is the
// one least disturbed by other work.
//
// MoE table: routed/shared/granularity/top-k settings, total and activated
// parameters of one MoE layer, and its forward time at 1, 16 and 512 tokens.
//
// Defaults (about a minute on 2 cores): hidden 1024, 4 layers, 8 heads of
// d_h = 128, vocab 4096, dense MLP 2816, bf16 weights and cache; MHA (8 KV
// heads), GQA (2), MQA (1) with rope on half of each head; MLA with
// d_c = 4 d_h = 512, d_h^R = d_h / 2 = 64 (the paper's ratios), no q LoRA.
// --quick: hidden 256, 2 layers, contexts 64/256/512 (a few seconds).
#include <dsv2/dsv2.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace {

using namespace dsv2;
using Clock = std::chrono::steady_clock;

struct Options {
    bool quick = false;
    std::int64_t hidden = 1024, layers = 4, heads = 8, head_dim = 128, gqa_groups = 2, vocab = 4096;
    std::int64_t intermediate = 2816;
    std::vector<std::int64_t> contexts = {1024, 8192, 32768};
    std::vector<std::int64_t> moe_tokens = {1, 16, 512};
    std::int64_t expert_width = 1024;
    std::string dtype = "bf16";
    int threads = 0;
    bool skip_moe = false, skip_attention = false;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Config base_config(const Options& o) {
    Config c = Config::tiny();
    c.vocab_size = o.vocab;
    c.hidden_size = o.hidden;
    c.intermediate_size = o.intermediate;
    c.num_hidden_layers = o.layers;
    c.num_attention_heads = o.heads;
    c.num_key_value_heads = o.heads;
    c.n_routed_experts = 0;  // dense MLPs: the attention table compares attention only
    c.n_shared_experts = 0;
    c.q_lora_rank.reset();
    c.rope_scaling = RopeScaling{};
    c.max_position_embeddings = *std::max_element(o.contexts.begin(), o.contexts.end()) + 64;
    return c;
}

// The config each attention kind runs with (see the header comment).
Config attention_config(const Options& o, AttentionKind kind) {
    Config c = base_config(o);
    if (kind == AttentionKind::mla) {
        c.kv_lora_rank = 4 * o.head_dim;
        c.qk_nope_head_dim = o.head_dim;
        c.qk_rope_head_dim = o.head_dim / 2;
        c.v_head_dim = o.head_dim;
    } else {
        c.kv_lora_rank = 4 * o.head_dim;  // unused by GQA; Config::validate wants it positive
        c.qk_nope_head_dim = o.head_dim / 2;
        c.qk_rope_head_dim = o.head_dim / 2;
        c.v_head_dim = o.head_dim;
    }
    return attention_variant_config(c, kind, o.gqa_groups);
}

// Fills every page a sequence holds with cheap pseudo-random values.
template <class Cache>
void fill_sequence(Cache& cache, std::int64_t seq) {
    using T = std::remove_cvref_t<decltype(*cache.layer(0).data)>;
    const auto& pages = cache.host_block_table(seq);
    std::uint32_t state = 12345u;
    for (std::int64_t l = 0; l < cache.n_layers(); ++l) {
        auto v = cache.layer(l);
        const std::int64_t per_page = v.shape[1] * v.shape[2];
        for (const auto p : pages) {
            T* dst = v.data + p * per_page;
            for (std::int64_t i = 0; i < per_page; ++i) {
                state = state * 1664525u + 1013904223u;
                dst[i] = convert<T>(static_cast<float>(static_cast<std::int32_t>(state >> 8) - (1 << 23)) * 0x1p-23f);
            }
        }
    }
}

struct AttentionRow {
    std::string name;
    std::int64_t kv_heads = 0, params = 0, attn_params_per_layer = 0, values_per_token_layer = 0, bytes_per_token = 0;
    std::vector<double> tokens_per_s, cache_mib;
};

template <class T, class Attn>
AttentionRow study_attention(Context<cpu>& ctx, const Options& o, AttentionKind kind) {
    const Config cfg = attention_config(o, kind);
    Model<T, cpu, Attn> model(ctx, cfg);
    init_random(ctx, model, 2024);
    AttentionRow row;
    row.name = std::string(to_string(kind));
    row.kv_heads = kind == AttentionKind::mla ? 0 : cfg.num_key_value_heads;
    row.params = count_weights(model);
    row.attn_params_per_layer = count_weights(model.layers[0].self_attn);
    const std::int64_t max_ctx = *std::max_element(o.contexts.begin(), o.contexts.end());
    auto session = model.new_session(ctx, max_ctx + 64, 1, 64);
    row.bytes_per_token = session.cache.bytes_per_token();
    row.values_per_token_layer = row.bytes_per_token / static_cast<std::int64_t>(sizeof(T)) / cfg.num_hidden_layers;
    for (const std::int64_t context : o.contexts) {
        const auto seq = session.cache.add_sequence();
        session.cache.append(seq, context - 1);
        fill_sequence(session.cache, seq);
        // One warm-up step, then time enough steps for a stable figure.
        const std::int64_t steps = o.quick ? 3 : context <= 2048 ? 10 : context <= 8192 ? 5 : 3;
        std::int32_t token = 7;
        std::vector<SequenceTokens> batch{{seq, std::span(&token, 1)}};
        (void)model.forward(ctx, session, batch, Logits::last);
        row.cache_mib.push_back(static_cast<double>(session.cache.bytes_in_use()) / (1 << 20));
        double best = 1e30;
        for (std::int64_t s = 0; s < steps; ++s) {
            const auto t0 = Clock::now();
            (void)model.forward(ctx, session, batch, Logits::last);
            best = std::min(best, seconds_since(t0));
        }
        row.tokens_per_s.push_back(1.0 / best);
        session.cache.free(seq);
    }
    return row;
}

template <class T>
void attention_table(Context<cpu>& ctx, const Options& o) {
    std::vector<AttentionRow> rows;
    rows.push_back(study_attention<T, GQA<T, cpu>>(ctx, o, AttentionKind::mha));
    rows.push_back(study_attention<T, GQA<T, cpu>>(ctx, o, AttentionKind::gqa));
    rows.push_back(study_attention<T, GQA<T, cpu>>(ctx, o, AttentionKind::mqa));
    rows.push_back(study_attention<T, MLA<T, cpu>>(ctx, o, AttentionKind::mla));

    fmt::print("\nAttention variants: hidden {}, {} layers, {} heads, d_h {}, {} weights and cache, {} threads\n",
               o.hidden, o.layers, o.heads, o.head_dim, o.dtype, ctx.threads);
    fmt::print("KV per token per layer: MHA 2·n_h·d_h, GQA 2·n_g·d_h, MQA 2·d_h, MLA d_c + d_h^R (paper Table 1)\n\n");
    std::string head = fmt::format("{:<5} {:>4} {:>12} {:>12} {:>10} {:>11} {:>7}", "attn", "n_kv", "params",
                                   "attn/layer", "KV/tok/l", "KV B/token", "vs MHA");
    for (auto c : o.contexts) head += fmt::format(" {:>9}", fmt::format("tok/s@{}", c >= 1024 ? fmt::format("{}K", c / 1024) : std::to_string(c)));
    for (auto c : o.contexts) head += fmt::format(" {:>10}", fmt::format("MiB@{}", c >= 1024 ? fmt::format("{}K", c / 1024) : std::to_string(c)));
    fmt::print("{}\n{}\n", head, std::string(head.size(), '-'));
    const double mha_bytes = static_cast<double>(rows[0].bytes_per_token);
    for (const auto& r : rows) {
        std::string line = fmt::format("{:<5} {:>4} {:>12} {:>12} {:>10} {:>11} {:>6.1f}%", r.name,
                                       r.kv_heads ? std::to_string(r.kv_heads) : "-", r.params, r.attn_params_per_layer,
                                       r.values_per_token_layer, r.bytes_per_token,
                                       100.0 * static_cast<double>(r.bytes_per_token) / mha_bytes);
        for (auto t : r.tokens_per_s) line += fmt::format(" {:>9.1f}", t);
        for (auto m : r.cache_mib) line += fmt::format(" {:>10.1f}", m);
        fmt::print("{}\n", line);
    }
}

struct MoeSetting {
    std::string name;
    std::int64_t routed, shared, granularity, top_k;
};

template <class T>
void moe_table(Context<cpu>& ctx, const Options& o) {
    using A = acc_t<T>;
    // Coarse settings, then DeepSeekMoE's two ideas: shared-expert isolation
    // (one expert always on, one fewer routed per token) and fine-grained
    // segmentation (granularity m: m× experts of 1/m width, m× top-k).
    const std::vector<MoeSetting> settings = {
        {"top-2 of 16 (GShard-like)", 16, 0, 1, 2},
        {"+ 1 shared, top-1", 16, 1, 1, 1},
        {"fine-grained m=4", 16, 0, 4, 2},
        {"DeepSeekMoE m=4", 16, 1, 4, 1},
        {"DeepSeekMoE m=8", 16, 1, 8, 1},
    };
    fmt::print("\nMoE layer: hidden {}, base expert width {}, greedy softmax routing, {} weights; "
               "routed/shared/top-k after segmentation\n\n",
               o.hidden, o.expert_width, o.dtype);
    std::string head = fmt::format("{:<27} {:>6} {:>6} {:>3} {:>5} {:>12} {:>12}", "setting", "routed", "shared", "m",
                                   "top-k", "params", "activated");
    for (auto n : o.moe_tokens) head += fmt::format(" {:>10}", fmt::format("ms@{}", n));
    fmt::print("{}\n{}\n", head, std::string(head.size(), '-'));
    for (const auto& s : settings) {
        Config c = base_config(o);
        c.n_routed_experts = s.routed;
        c.n_shared_experts = s.shared;
        c.num_experts_per_tok = s.top_k;
        c.moe_intermediate_size = o.expert_width;
        c.topk_method = TopkMethod::greedy;
        c.norm_topk_prob = true;
        c = fine_grained(c, s.granularity);
        MoE<T, cpu> moe(c);
        init_random(ctx, moe, 99);
        const auto p = moe_layer_params(c);
        std::string line = fmt::format("{:<27} {:>6} {:>6} {:>3} {:>5} {:>12} {:>12}", s.name, c.n_routed_experts,
                                       c.n_shared_experts, s.granularity, c.num_experts_per_tok, p.total, p.activated);
        Workspace<cpu> ws;
        for (const std::int64_t n : o.moe_tokens) {
            Tensor<A, cpu, 2> x({n, c.hidden_size}), y({n, c.hidden_size});
            for (std::int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<A>(std::sin(0.37 * static_cast<double>(i)));
            moe.forward(ctx, ws, x.cview(), y.view());  // warm-up
            const int reps = o.quick ? 3 : n <= 16 ? 20 : 5;
            std::vector<double> times;
            for (int r = 0; r < reps; ++r) {
                ws.reset();
                const auto t0 = Clock::now();
                moe.forward(ctx, ws, x.cview(), y.view());
                times.push_back(seconds_since(t0));
            }
            line += fmt::format(" {:>10.3f}", 1e3 * *std::min_element(times.begin(), times.end()));
        }
        fmt::print("{}\n", line);
    }
}

template <class T>
void run(const Options& o) {
    // Eigen's GEMM sizes its OpenMP team from omp_get_max_threads(): make
    // --threads bound it too (--threads 1 then runs without any barrier,
    // which keeps timings meaningful on a busy machine).
    if (o.threads > 0) omp_set_num_threads(o.threads);
    Context<cpu> ctx(o.threads);
    const auto t0 = Clock::now();
    if (!o.skip_attention) attention_table<T>(ctx, o);
    if (!o.skip_moe) moe_table<T>(ctx, o);
    fmt::print("\n(total {:.1f} s)\n", seconds_since(t0));
}

}  // namespace

int main(int argc, char** argv) try {
    Options o;
    CLI::App app{"variant_study: MHA/GQA/MQA/MLA and DeepSeekMoE settings compared with dsv2 on this machine"};
    app.add_flag("--quick", o.quick, "small sizes, a few seconds (what ctest runs; overrides the size flags)");
    app.add_option("--hidden", o.hidden, "hidden size")->capture_default_str();
    app.add_option("--layers", o.layers, "decoder layers")->capture_default_str();
    app.add_option("--heads", o.heads, "attention heads")->capture_default_str();
    app.add_option("--head-dim", o.head_dim, "d_h")->capture_default_str();
    app.add_option("--gqa-groups", o.gqa_groups, "key/value heads of the GQA model")->capture_default_str();
    app.add_option("--contexts", o.contexts, "decode contexts")->delimiter(',')->capture_default_str();
    app.add_option("--moe-tokens", o.moe_tokens, "MoE batch sizes")->delimiter(',')->capture_default_str();
    app.add_option("--expert-width", o.expert_width, "routed expert width before segmentation")->capture_default_str();
    app.add_option("--dtype", o.dtype, "f32 or bf16")->capture_default_str();
    app.add_option("--threads", o.threads, "CPU threads (0: all)")->capture_default_str();
    app.add_flag("--no-moe", o.skip_moe, "skip the MoE table");
    app.add_flag("--no-attention", o.skip_attention, "skip the attention table");
    CLI11_PARSE(app, argc, argv);
    if (o.quick) {
        o.hidden = 256;
        o.layers = 2;
        o.heads = 4;
        o.head_dim = 64;
        o.vocab = 512;
        o.intermediate = 704;
        o.contexts = {64, 256, 512};
        o.moe_tokens = {1, 16, 64};
        o.expert_width = 256;
    }
    DSV2_CHECK(o.hidden > 0 && o.layers > 0 && o.heads > 0 && o.head_dim > 0 && o.head_dim % 4 == 0, RangeError,
               "[variant_study] hidden {}, layers {}, heads {}, head dim {} (a multiple of 4): invalid", o.hidden,
               o.layers, o.heads, o.head_dim);
    DSV2_CHECK(!o.contexts.empty() && std::all_of(o.contexts.begin(), o.contexts.end(), [](auto c) { return c >= 2; }),
               RangeError, "[variant_study] contexts must be >= 2");
    if (o.dtype == "bf16") {
        run<bf16>(o);
    } else if (o.dtype == "f32") {
        run<float>(o);
    } else {
        DSV2_FAIL(RangeError, "[variant_study] --dtype {}: expected f32 or bf16", o.dtype);
    }
    return 0;
} catch (const std::exception& e) {
    fmt::print(stderr, "variant_study: {}\n", e.what());
    return 1;
}
