// `dsv2 bench`: prefill and decode speed in the style of llama-bench, with
// the memory roofline measured in the same run (docs/benchmarks.md).
//
//   dsv2 bench --preset v2-lite --layers 8 --dtype bf16 --threads 2
//
// With a preset the model gets seeded random weights (speed does not depend
// on their values); with --model the checkpoint is loaded. `--depth` tokens
// of context are pre-filled once, untimed; each rep then truncates back to
// them and times a prefill of --prompt tokens, then (after truncating again)
// --gen decode steps of one token per sequence.
#pragma once

#include <dsv2/dsv2.hpp>
#include <dsv2/model/fast_random.hpp>
#include <dsv2/util/bandwidth.hpp>

#include "dsv2_table1.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <sys/resource.h>

namespace dsv2_bench {

struct Args {
    std::string model, preset = "v2-lite", dtype = "bf16", cache = "auto", backend = "cpu";
    std::int64_t layers = 0, prompt = 512, gen = 64, depth = 0, batch = 1;
    int threads = 0, reps = 3;
    bool json = false, table1 = false;
};

inline void add_options(CLI::App* sub, Args& a) {
    auto* model = sub->add_option("--model", a.model, "checkpoint directory (instead of --preset)");
    sub->add_option("--preset", a.preset, "v2-lite, v2 or tiny: seeded random weights")
        ->capture_default_str()
        ->excludes(model);
    sub->add_option("--layers", a.layers, "keep the first N decoder layers (0: all)")->capture_default_str();
    sub->add_option("--dtype", a.dtype, "weight and cache type: f32, bf16, f16, or int8 (int8 linear weights; see --cache)")
        ->capture_default_str();
    sub->add_option("--cache", a.cache,
                    "latent cache: auto (int8 for int8 weights, else dense), dense (the weights' float type; bf16 "
                    "for int8) or int8 (8-bit rows, CPU)")
        ->check(CLI::IsMember({"auto", "dense", "int8"}))
        ->capture_default_str();
    sub->add_option("--prompt", a.prompt, "prefill tokens per sequence (0: skip)")->capture_default_str();
    sub->add_option("--gen", a.gen, "decode steps (0: skip)")->capture_default_str();
    sub->add_option("--depth", a.depth, "context tokens pre-filled before timing")->capture_default_str();
    sub->add_option("--batch", a.batch, "sequences decoded together")->capture_default_str();
    sub->add_option("--threads", a.threads, "CPU threads (0: all)")->capture_default_str();
    sub->add_option("--backend", a.backend, "cpu, or cuda when built with DSV2_ENABLE_CUDA")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    sub->add_option("--reps", a.reps, "repetitions; the median is reported")->capture_default_str();
    sub->add_flag("--json", a.json, "print one JSON object");
    sub->add_flag("--table1", a.table1, "print the paper's Table 1 at V2 and V2-Lite shapes and a 128K-token cache");
}

inline double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

inline std::int64_t peak_rss_bytes() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<std::int64_t>(u.ru_maxrss) * 1024;  // Linux: KiB
}

inline dsv2::Config bench_config(const Args& a) {
    dsv2::Config cfg;
    if (!a.model.empty()) {
        cfg = dsv2::load_config(std::filesystem::path(a.model) / "config.json");
    } else if (a.preset == "v2-lite") {
        cfg = dsv2::Config::deepseek_v2_lite();
    } else if (a.preset == "v2") {
        cfg = dsv2::Config::deepseek_v2();
    } else if (a.preset == "tiny") {
        cfg = dsv2::Config::tiny();
    } else {
        DSV2_FAIL(dsv2::Unsupported, "--preset {}: expected v2-lite, v2 or tiny", a.preset);
    }
    if (a.layers > 0) cfg.num_hidden_layers = std::min(cfg.num_hidden_layers, a.layers);
    return cfg;
}

// Weight bytes one decode token reads: everything "activated" (attention,
// dense MLPs, router, shared and K routed experts, norms, LM head) plus its
// embedding row — counted from the model's own tensors, so that int8
// values, their per-row scales and the parts int8 keeps in bf16 each count
// at their real size. Routed experts are read K of E per token on average.
template <class Model>
double weight_bytes_per_token(Model& model) {
    const auto& cfg = model.config;
    const double routed = cfg.n_routed_experts > 0
                              ? static_cast<double>(cfg.num_experts_per_tok) / static_cast<double>(cfg.n_routed_experts)
                              : 0.0;
    double bytes = 0;
    model.for_each_weight([&](const std::string& name, auto& t) {
        const auto b = static_cast<double>(t.bytes());
        if (name == "model.embed_tokens.weight") {
            bytes += b / static_cast<double>(cfg.vocab_size);
        } else if (name.find(".mlp.experts.") != std::string::npos) {
            bytes += b * routed;
        } else {
            bytes += b;
        }
    });
    return bytes;
}

template <class Model>
double resident_weight_bytes(Model& model) {
    double bytes = 0;
    model.for_each_weight([&](const std::string&, auto& t) { bytes += static_cast<double>(t.bytes()); });
    return bytes;
}

// What a bench run needs of its backend: a context, the bandwidth probe,
// waiting for queued work, and the threads that fill random weights. The
// CPU's is here; the GPU's (a device copy as the probe) in dsv2_cuda.cu.
struct CpuBench {
    using Backend = dsv2::cpu;
    dsv2::Context<dsv2::cpu> ctx;
    dsv2::TriadProbe probe;
    explicit CpuBench(int threads) : ctx(threads), probe(ctx.threads) {}
    double bandwidth(int passes) { return probe.measure(passes).bytes_per_s; }
    void sync() {}
    int fill_threads() const { return ctx.threads; }
    int threads() const { return ctx.threads; }
    std::string probe_name() const { return fmt::format("triad, {} threads", ctx.threads); }
    std::string memory() const { return ""; }  // peak RSS says it all
};

template <class T, class Bench>
int run(const Args& a, Bench& bench) {
    using Clock = std::chrono::steady_clock;
    using B = typename Bench::Backend;
    DSV2_CHECK(a.prompt >= 0 && a.gen >= 0 && a.depth >= 0 && a.batch >= 1 && a.reps >= 1, dsv2::RangeError,
               "bench: --prompt, --gen, --depth must be >= 0 and --batch, --reps >= 1");
    const dsv2::Config cfg = bench_config(a);
    auto& ctx = bench.ctx;
    const auto t_build = Clock::now();
    dsv2::Model<T, B> model(ctx, cfg);
    if (a.model.empty()) {
        dsv2::init_random_fast(ctx, model, 42, bench.fill_threads());
    } else {
        dsv2::Checkpoint ckpt(a.model);
        dsv2::LoadOptions opt;
        opt.allow_unexpected = a.layers > 0;  // the layers cut off stay in the checkpoint
        dsv2::load_weights(ctx, model, ckpt, opt);
    }
    const double build_s = std::chrono::duration<double>(Clock::now() - t_build).count();
    // Measured before the reps and again after each timed decode; each decode
    // rep is compared with the mean of the probes on either side of it.
    std::vector<double> bw{bench.bandwidth(4)};

    const std::int64_t per_seq = a.depth + std::max(a.prompt, a.gen);
    auto session = model.new_session(ctx, a.batch * per_seq, a.batch, 64, dsv2::parse_latent_format(a.cache));
    const char* cache_name = dsv2::latent_format_name(session.cache.format());
    std::vector<std::int64_t> seqs;
    for (std::int64_t b = 0; b < a.batch; ++b) seqs.push_back(session.cache.add_sequence());
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(cfg.vocab_size - 1));
    auto random_tokens = [&](std::int64_t n) {
        std::vector<std::int32_t> t(static_cast<std::size_t>(n));
        for (auto& v : t) v = token(rng);
        return t;
    };
    // One step in which every sequence gets `n` new tokens.
    auto step = [&](std::int64_t n) {
        std::vector<std::vector<std::int32_t>> toks;
        std::vector<dsv2::SequenceTokens> batch;
        for (std::int64_t b = 0; b < a.batch; ++b) toks.push_back(random_tokens(n));
        for (std::int64_t b = 0; b < a.batch; ++b) batch.push_back({seqs[static_cast<std::size_t>(b)], toks[static_cast<std::size_t>(b)]});
        model.forward(ctx, session, batch, dsv2::Logits::last);
        bench.sync();
    };
    auto truncate_all = [&](std::int64_t len) {
        for (auto s : seqs) session.cache.truncate(s, len);
    };
    for (std::int64_t done = 0; done < a.depth; done += 512) step(std::min<std::int64_t>(512, a.depth - done));

    std::vector<double> pp, tg;
    for (int r = 0; r < a.reps; ++r) {
        if (a.prompt > 0) {
            truncate_all(a.depth);
            const auto t0 = Clock::now();
            step(a.prompt);
            pp.push_back(static_cast<double>(a.prompt * a.batch) / std::chrono::duration<double>(Clock::now() - t0).count());
        }
        if (a.gen > 0) {
            truncate_all(a.depth);
            step(1);  // warm-up, untimed: first decode step sizes the scratch
            const auto t0 = Clock::now();
            for (std::int64_t g = 1; g < a.gen; ++g) step(1);
            const double s = std::chrono::duration<double>(Clock::now() - t0).count();
            tg.push_back(static_cast<double>((a.gen - 1) * a.batch) / s);
            bw.push_back(bench.bandwidth(2));
        }
    }

    const double pp_rate = median(pp), tg_rate = median(tg);
    const double weight_bytes = weight_bytes_per_token(model) / static_cast<double>(a.batch);
    const double resident = resident_weight_bytes(model);
    const double kv_per_token = static_cast<double>(session.cache.bytes_per_token());
    const double mean_context = static_cast<double>(a.depth) + static_cast<double>(a.gen) / 2.0;
    const double cache_bytes = kv_per_token * mean_context;  // each sequence reads its own context
    const double decode_bytes = weight_bytes + cache_bytes;
    std::vector<double> fractions;  // each decode rep against the probes around it
    for (std::size_t r = 0; r < tg.size(); ++r) fractions.push_back(decode_bytes * tg[r] / ((bw[r] + bw[r + 1]) / 2));
    const double roofline = median(fractions), bw_median = median(bw);
    const auto [bw_min, bw_max] = std::minmax_element(bw.begin(), bw.end());
    const std::int64_t rss = peak_rss_bytes();

    const std::string name = a.model.empty() ? a.preset : a.model;
    if (a.json) {
        fmt::print(
            "{{\"model\": \"{}\", \"backend\": \"{}\", \"dtype\": \"{}\", \"cache\": \"{}\", \"layers\": {}, \"threads\": {}, \"prompt\": {}, \"gen\": {}, "
            "\"depth\": {}, \"batch\": {}, \"reps\": {}, \"prefill_tokens_per_s\": {:.3f}, \"decode_tokens_per_s\": {:.3f}, "
            "\"decode_bytes_per_token\": {:.0f}, \"decode_weight_bytes_per_token\": {:.0f}, "
            "\"decode_cache_bytes_per_token\": {:.0f}, \"bandwidth_gb_s\": {:.3f}, \"decode_roofline_fraction\": {:.4f}, "
            "\"peak_rss_bytes\": {}, \"weight_bytes\": {:.0f}, \"kv_cache_bytes_per_token\": {:.0f}, \"build_seconds\": {:.2f}}}\n",
            name, a.backend, a.dtype, cache_name, cfg.num_hidden_layers, bench.threads(), a.prompt, a.gen, a.depth, a.batch, a.reps, pp_rate,
            tg_rate, decode_bytes, weight_bytes, cache_bytes, bw_median / 1e9, roofline, rss, resident, kv_per_token,
            build_s);
        return 0;
    }
    fmt::print("model      {} ({} layers), dtype {}, {} latent cache, {} backend, {} threads, batch {}, built in {:.1f} s\n",
               name, cfg.num_hidden_layers, a.dtype, cache_name, a.backend, bench.threads(), a.batch, build_s);
    if (bw.size() == 1) {
        fmt::print("bandwidth  {:.2f} GB/s ({}, best of 4 passes)\n", bw_median / 1e9, bench.probe_name());
    } else {
        fmt::print("bandwidth  {:.2f} GB/s ({}; median of {} probes, {:.2f}-{:.2f}, one before the reps "
                   "and one after each decode)\n",
                   bw_median / 1e9, bench.probe_name(), bw.size(), *bw_min / 1e9, *bw_max / 1e9);
    }
    if (a.prompt > 0)
        fmt::print("prefill    pp{:<5} @ depth {:<6} {:8.2f} tok/s  (median of {})\n", a.prompt, a.depth, pp_rate, a.reps);
    if (a.gen > 0) {
        fmt::print("decode     tg{:<5} @ depth {:<6} {:8.2f} tok/s  (median of {})\n", a.gen, a.depth, tg_rate, a.reps);
        fmt::print("bytes/tok  {:.3f} GB = weights {:.3f} GB + latent cache {:.4f} GB\n", decode_bytes / 1e9,
                   weight_bytes / 1e9, cache_bytes / 1e9);
        fmt::print("roofline   {:.1f}% of the bandwidth probed around each rep (median; {:.2f} GB/s achieved)\n",
                   100 * roofline, decode_bytes * tg_rate / 1e9);
    }
    fmt::print("memory     peak RSS {:.2f} GiB; weights {:.2f} GiB; latent cache {} bytes per token{}\n",
               static_cast<double>(rss) / (1 << 30), resident / (1 << 30), session.cache.bytes_per_token(),
               bench.memory());
    return 0;
}

template <class T>
int run_cpu(const Args& a) {
    CpuBench bench(a.threads);
    return run<T>(a, bench);
}

int cmd_bench_cuda(const Args& a);  // dsv2.cpp: dsv2_cuda::bench where built with CUDA

inline int cmd_bench(const Args& a) {
    if (a.table1) return cmd_table1();
    if (a.backend == "cuda") return cmd_bench_cuda(a);
    if (a.dtype == "f32") return run_cpu<float>(a);
    if (a.dtype == "bf16") return run_cpu<dsv2::bf16>(a);
    if (a.dtype == "f16") return run_cpu<dsv2::f16>(a);
    if (a.dtype == "int8") return run_cpu<dsv2::q8>(a);
    DSV2_FAIL(dsv2::Unsupported, "--dtype {}: expected f32, bf16, f16 or int8", a.dtype);
}

}  // namespace dsv2_bench
