// The `dsv2` command: inspect, score and generate with DeepSeek-V2
// checkpoints in Hugging Face format. Subcommands and flags are kept stable
// for the tools downstream (docs/usage.md).
#include <dsv2/dsv2.hpp>

#include "dsv2_bench.hpp"
#ifdef DSV2_WITH_CUDA
#include "dsv2_cuda.hpp"
#endif

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <sstream>
#include <unistd.h>

#ifndef DSV2_DEFAULT_MODEL
#define DSV2_DEFAULT_MODEL "models/tiny-kjv"
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Common {
    std::string model = DSV2_DEFAULT_MODEL;
    std::string dtype = "f32";
    std::string backend = "cpu";
    std::string cache = "auto";
    int threads = 0;
};

std::vector<std::int32_t> parse_ids(const std::string& text) { return dsv2::parse_token_ids(text, "--tokens"); }

// Loads with a progress bar on stderr once loading takes more than a moment.
template <class T>
dsv2::Model<T, dsv2::cpu> load(dsv2::Context<dsv2::cpu>& ctx, const std::string& dir) {
    const auto start = Clock::now();
    bool shown = false;
    dsv2::LoadOptions opt;
    opt.progress = [&](std::int64_t done, std::int64_t total) {
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        if (!shown && s < 0.5) return;  // quick loads stay quiet
        shown = true;
        constexpr int width = 30;
        const int filled = static_cast<int>(width * done / std::max<std::int64_t>(total, 1));
        fmt::print(stderr, "\rloading {} [{}{}] {}/{} tensors, {:.1f} s", dir, std::string(filled, '#'),
                   std::string(width - filled, '.'), done, total, s);
        if (done == total) fmt::print(stderr, "\n");
    };
    return dsv2::load_model<T, dsv2::cpu>(ctx, dir, opt);
}

void check_backend(const Common& c) {
    DSV2_CHECK(c.dtype != "int8" || c.backend == "cpu", dsv2::Unsupported,
               "--dtype int8 with --backend {}: int8 weights run on the cpu backend only so far", c.backend);
    DSV2_CHECK(c.cache != "int8" || c.backend == "cpu", dsv2::Unsupported,
               "--cache {} with --backend {}: the int8 latent cache runs on the cpu backend only so far", c.cache,
               c.backend);
#ifdef DSV2_WITH_CUDA
    DSV2_CHECK(c.backend == "cpu" || c.backend == "cuda", dsv2::Unsupported, "--backend {}: expected cpu or cuda",
               c.backend);
#else
    DSV2_CHECK(c.backend == "cpu", dsv2::Unsupported,
               "--backend {}: this build has only the cpu backend (configure with DSV2_ENABLE_CUDA for cuda)", c.backend);
#endif
}

// Calls f.template operator()<T>() with T named by --dtype.
template <class F>
int with_dtype(const std::string& dtype, F&& f) {
    if (dtype == "f64") return f.template operator()<double>();
    if (dtype == "f32") return f.template operator()<float>();
    if (dtype == "bf16") return f.template operator()<dsv2::bf16>();
    if (dtype == "f16") return f.template operator()<dsv2::f16>();
    if (dtype == "int8") return f.template operator()<dsv2::q8>();
    DSV2_FAIL(dsv2::Unsupported, "--dtype {}: expected f64, f32, bf16, f16 or int8", dtype);
}

std::string human_bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        ++u;
    }
    return fmt::format("{:.1f} {}", b, units[u]);
}

int cmd_info(const Common& c) {
    const auto cfg = dsv2::load_config(std::filesystem::path(c.model) / "config.json");
    const auto p = dsv2::count_params(cfg);
    std::int64_t moe = 0;
    for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) moe += cfg.is_moe_layer(i);
    fmt::print("model        {}\n", c.model);
    fmt::print("shape        hidden {}, layers {} ({} dense, {} MoE), heads {}, vocab {}\n", cfg.hidden_size,
               cfg.num_hidden_layers, cfg.num_hidden_layers - moe, moe, cfg.num_attention_heads, cfg.vocab_size);
    fmt::print("attention    MLA: q_lora_rank {}, kv_lora_rank {}, head dims nope {} + rope {}, v {}, softmax scale {:.7f}\n",
               cfg.q_lora_rank ? std::to_string(*cfg.q_lora_rank) : "null", cfg.kv_lora_rank, cfg.qk_nope_head_dim,
               cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.softmax_scale());
    if (cfg.rope_scaling.kind == dsv2::RopeScalingKind::yarn) {
        fmt::print("rope         YaRN factor {} over {} positions (mscale {}, mscale_all_dim {}), max positions {}\n",
                   cfg.rope_scaling.factor, cfg.rope_scaling.original_max_position_embeddings, cfg.rope_scaling.mscale,
                   cfg.rope_scaling.mscale_all_dim, cfg.max_position_embeddings);
    } else {
        fmt::print("rope         theta {}, max positions {}\n", cfg.rope_theta, cfg.max_position_embeddings);
    }
    if (cfg.n_routed_experts > 0) {
        fmt::print("moe          {} routed + {} shared experts of width {}, top-{} by {}{}, {}, scaling {}\n",
                   cfg.n_routed_experts, cfg.n_shared_experts, cfg.moe_intermediate_size, cfg.num_experts_per_tok,
                   dsv2::to_string(cfg.topk_method),
                   cfg.topk_method == dsv2::TopkMethod::greedy ? std::string()
                                                               : fmt::format(" ({} of {} groups)", cfg.topk_group, cfg.n_group),
                   cfg.norm_topk_prob ? "normalised" : "not normalised", cfg.routed_scaling_factor);
    }
    fmt::print("parameters   {:.3f} B total, {:.3f} B activated per token ({} / {})\n", p.total / 1e9, p.activated / 1e9,
               p.total, p.activated);
    const std::int64_t groups = std::min<std::int64_t>(8, cfg.num_attention_heads);
    const auto kv = dsv2::kv_cache_values_per_token(cfg, groups);
    fmt::print("kv cache per token, all {} layers (the paper's Table 1):\n", cfg.num_hidden_layers);
    fmt::print("  {:<26} {:>12} {:>14} {:>14}\n", "attention", "values", "bf16 bytes", "vs MHA");
    auto row = [&](const std::string& name, std::int64_t v) {
        fmt::print("  {:<26} {:>12} {:>14} {:>13.1f}%\n", name, v, 2 * v, 100.0 * static_cast<double>(v) / static_cast<double>(kv.mha));
    };
    row(fmt::format("MHA ({} heads)", cfg.num_attention_heads), kv.mha);
    row(fmt::format("GQA ({} groups)", groups), kv.gqa);
    row("MQA", kv.mqa);
    row(fmt::format("MLA ({} + {})", cfg.kv_lora_rank, cfg.qk_rope_head_dim), kv.mla);
    return 0;
}

int cmd_logits(const Common& c, const std::string& tokens_text, const std::string& out) {
    check_backend(c);
#ifdef DSV2_WITH_CUDA
    if (c.backend == "cuda") return dsv2_cuda::logits(c.model, c.dtype, tokens_text, out);
#endif
    const auto tokens = parse_ids(tokens_text);
    return with_dtype(c.dtype, [&]<class T>() {
        dsv2::Context<dsv2::cpu> ctx(c.threads);
        const auto model = load<T>(ctx, c.model);
        auto session = model.new_session(ctx, std::ssize(tokens), 1, 64, dsv2::parse_latent_format(c.cache));
        const dsv2::SequenceTokens seq{session.cache.add_sequence(), tokens};
        const auto logits = model.forward(ctx, session, std::span(&seq, 1), dsv2::Logits::all);
        std::vector<float> values(static_cast<std::size_t>(logits.numel()));
        for (std::int64_t i = 0; i < logits.numel(); ++i) values[static_cast<std::size_t>(i)] = static_cast<float>(logits.data[i]);
        dsv2::write_npy<float>(out, values, {logits.shape[0], logits.shape[1]});
        fmt::print("wrote {}: float32 logits of shape [{}, {}] ({} prefill, dtype {}, {} cache)\n", out, logits.shape[0],
                   logits.shape[1], tokens.size(), c.dtype, dsv2::latent_format_name(session.cache.format()));
        return 0;
    });
}

struct GenerateArgs {
    std::string prompt, tokens;
    std::int64_t max_new_tokens = 64;
    dsv2::SamplerOptions sampling;
    bool exact_attention = false;
};

int cmd_generate(const Common& c, const GenerateArgs& g) {
    check_backend(c);
#ifdef DSV2_WITH_CUDA
    if (c.backend == "cuda") {
        dsv2_bench::check_exact_attention_backend("generate", g.exact_attention, c.backend);
        return dsv2_cuda::generate(c.model, c.dtype, g.prompt, g.tokens, g.max_new_tokens, g.sampling);
    }
#endif
    return with_dtype(c.dtype, [&]<class T>() {
        dsv2::Context<dsv2::cpu> ctx(c.threads);
        if (g.exact_attention) ctx.bf16_cache_products = dsv2::Bf16CacheProducts::exact;
        const auto model = load<T>(ctx, c.model);
        const dsv2::ByteTokenizer bytes;
        const bool text_io = dsv2::ByteTokenizer::fits(model.config);
        std::vector<std::int32_t> prompt;
        if (!g.tokens.empty()) {
            prompt = parse_ids(g.tokens);
        } else {
            DSV2_CHECK(text_io, dsv2::Unsupported,
                       "--prompt: this model's tokenizer is not supported yet (only the byte-level tokenizer of the "
                       "embedded model); pass token ids with --tokens");
            prompt = bytes.encode(g.prompt);
            fmt::print("{}", g.prompt);
        }
        dsv2::GenerateOptions opt;
        opt.max_new_tokens = g.max_new_tokens;
        opt.sampling = g.sampling;
        if (model.config.eos_token_id) opt.eos = static_cast<std::int32_t>(*model.config.eos_token_id);
        auto session =
            model.new_session(ctx, std::ssize(prompt) + g.max_new_tokens, 1, 64, dsv2::parse_latent_format(c.cache));
        const auto result = dsv2::generate(ctx, model, session, {prompt}, opt, [&](std::size_t, std::int32_t id) {
            if (text_io && g.tokens.empty()) {
                if (id < 256) std::fputc(id, stdout);
            } else {
                fmt::print("{} ", id);
            }
            std::fflush(stdout);
        });
        fmt::print("\n");
        if (!g.tokens.empty()) fmt::print("ids: {}\n", fmt::join(result.tokens[0], ","));
        std::fflush(stdout);  // the summary goes to stderr: keep it after the text
        auto rate = [](std::int64_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
        fmt::print(stderr,
                   "prefill {} tokens at {:.1f} tok/s; decode {} tokens at {:.1f} tok/s; {} cache {} ({} per token)\n",
                   result.prefill_tokens, rate(result.prefill_tokens, result.prefill_seconds), result.decode_tokens,
                   rate(result.decode_tokens, result.decode_seconds), dsv2::latent_format_name(session.cache.format()),
                   human_bytes(static_cast<double>(result.cache_bytes)),
                   human_bytes(static_cast<double>(session.cache.bytes_per_token())));
        return 0;
    });
}

}  // namespace

int dsv2_bench::cmd_bench_cuda(const Args& a) {
    DSV2_CHECK(a.dtype != "int8" && a.cache != "int8", dsv2::Unsupported,
               "bench --backend cuda: int8 weights and the int8 latent cache run on the cpu backend only so far");
    dsv2_bench::check_exact_attention_backend("bench", a.exact_attention, a.backend);
#ifdef DSV2_WITH_CUDA
    return dsv2_cuda::bench(a);
#else
    DSV2_FAIL(dsv2::Unsupported,
              "--backend cuda: this build has only the cpu backend (configure with DSV2_ENABLE_CUDA for cuda)");
#endif
}

int main(int argc, char** argv) {
    CLI::App app{"dsv2: DeepSeek-V2 inference on Hugging Face checkpoints"};
    app.require_subcommand(1);
    Common common;
    auto add_model = [&](CLI::App* sub) {
        sub->add_option("--model", common.model, "checkpoint directory (config.json + safetensors)")
            ->capture_default_str();
    };
    auto add_run = [&](CLI::App* sub) {
        sub->add_option("--dtype", common.dtype,
                        "weight and cache type: f64, f32, bf16, f16, or int8 (int8 linear weights; see --cache; cpu "
                        "only)")
            ->capture_default_str();
        sub->add_option("--backend", common.backend, "cpu, or cuda when built with DSV2_ENABLE_CUDA")->capture_default_str();
        sub->add_option("--threads", common.threads, "CPU threads (0: all)")->capture_default_str();
        sub->add_option("--cache", common.cache,
                        "latent cache: auto (int8 for --dtype int8, else dense), dense (the dtype's float type; "
                        "bf16 for int8) or int8 (8-bit rows, cpu only; docs/usage.md)")
            ->check(CLI::IsMember({"auto", "dense", "int8"}))
            ->capture_default_str();
    };

    auto* info = app.add_subcommand("info", "config summary, parameter counts, KV-cache bytes per token");
    add_model(info);

    auto* logits = app.add_subcommand("logits", "one prefill; writes float32 logits [T, vocab] as .npy");
    add_model(logits);
    add_run(logits);
    std::string tokens, out;
    logits->add_option("--tokens", tokens, "comma-separated token ids")->required();
    logits->add_option("--out", out, "output .npy file")->required();

    auto* gen = app.add_subcommand("generate", "stream a continuation of a prompt");
    add_model(gen);
    add_run(gen);
    GenerateArgs g;
    auto* prompt_opt = gen->add_option("--prompt", g.prompt, "prompt text (byte-level tokenizer models)");
    auto* tokens_opt = gen->add_option("--tokens", g.tokens, "prompt as comma-separated token ids");
    prompt_opt->excludes(tokens_opt);
    gen->add_option("--max-new-tokens", g.max_new_tokens, "token budget")->capture_default_str();
    gen->add_option("--temperature", g.sampling.temperature, "0 is greedy")->capture_default_str();
    gen->add_option("--top-k", g.sampling.top_k, "sample among the k best (0: all)")->capture_default_str();
    gen->add_option("--top-p", g.sampling.top_p, "nucleus mass")->capture_default_str();
    gen->add_option("--seed", g.sampling.seed, "sampling seed")->capture_default_str();
    dsv2_bench::add_exact_attention(gen, g.exact_attention);

    auto* bench = app.add_subcommand("bench", "prefill/decode tokens per second and the memory roofline (llama-bench style)");
    dsv2_bench::Args bench_args;
    dsv2_bench::add_options(bench, bench_args);

    CLI11_PARSE(app, argc, argv);
    try {
        if (*info) return cmd_info(common);
        if (*logits) return cmd_logits(common, tokens, out);
        if (*bench) return dsv2_bench::cmd_bench(bench_args);
        if (*gen) {
            if (prompt_opt->count() == 0 && tokens_opt->count() == 0) {
                fmt::print(stderr, "dsv2 generate: give --prompt TEXT or --tokens IDS\n");
                return 2;
            }
            return cmd_generate(common, g);
        }
    } catch (const std::exception& e) {
        fmt::print(stderr, "dsv2: {}\n", e.what());
        return 1;
    }
    return 0;
}
