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
//
// Several depths (`--depth 0,4096`) get a batch of sequences each, and their
// decode steps take turns, one token at a time: on a machine whose memory
// bandwidth drifts by tens of percent within minutes (a shared VM), runs
// made one after the other compare the drift as much as the depths, while
// turns a few milliseconds apart see the same machine.
#pragma once

#include <dsv2/dsv2.hpp>
#include <dsv2/model/fast_random.hpp>
#include <dsv2/util/bandwidth.hpp>

#include "dsv2_table1.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <sys/resource.h>

namespace dsv2_bench {

struct Args {
    std::string model, preset = "v2-lite", dtype = "bf16", cache = "auto", backend = "cpu";
    std::int64_t layers = 0, prompt = 512, gen = 64, batch = 1;
    std::vector<std::int64_t> depths{0};
    int threads = 0, reps = 3;
    bool json = false, table1 = false, exact_attention = false;
};

// `--exact-attention`, which `dsv2 generate` takes too.
inline void add_exact_attention(CLI::App* sub, bool& exact) {
    sub->add_flag("--exact-attention", exact,
                  "exact f32 products in decode attention over a bf16 cache (cpu; default: bf16 dot products where "
                  "the CPU makes them pay, docs/usage.md)");
}

// The GPU's decode kernel rounds q and P to 16 bits whatever the flag says.
inline void check_exact_attention_backend(const char* command, bool exact, const std::string& backend) {
    DSV2_CHECK(!exact || backend == "cpu", dsv2::Unsupported,
               "{} --backend {} --exact-attention: the GPU's decode kernel rounds q and P to the cache's 16-bit "
               "type; exact attention over a bf16 cache is a cpu option",
               command, backend);
}

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
    sub->add_option("--depth", a.depths,
                    "context tokens pre-filled before timing; several (0,4096) decode in turns, a token each")
        ->delimiter(',')
        ->capture_default_str();
    sub->add_option("--batch", a.batch, "sequences decoded together")->capture_default_str();
    sub->add_option("--threads", a.threads, "CPU threads (0: all)")->capture_default_str();
    sub->add_option("--backend", a.backend, "cpu, or cuda when built with DSV2_ENABLE_CUDA")
        ->check(CLI::IsMember({"cpu", "cuda"}))
        ->capture_default_str();
    sub->add_option("--reps", a.reps, "repetitions; the median is reported")->capture_default_str();
    add_exact_attention(sub, a.exact_attention);
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
    explicit CpuBench(const Args& a) : ctx(a.threads), probe(ctx.threads) {
        if (a.exact_attention) ctx.bf16_cache_products = dsv2::Bf16CacheProducts::exact;
    }
    double bandwidth(int passes) { return probe.measure(passes).bytes_per_s; }
    void sync() {}
    int fill_threads() const { return ctx.threads; }
    int threads() const { return ctx.threads; }
    std::string probe_name() const { return fmt::format("triad, {} threads", ctx.threads); }
    std::string memory() const { return ""; }  // peak RSS says it all
    template <class T>
    std::string attention(const dsv2::LatentCache<T, dsv2::cpu>& cache, const dsv2::Config& cfg) const {
        return dsv2::mla_decode_arithmetic<T>(ctx, cache.int8(), cache.width(), cfg.kv_lora_rank);
    }
};

template <class T, class Bench>
int run(const Args& a, Bench& bench) {
    using Clock = std::chrono::steady_clock;
    using B = typename Bench::Backend;
    DSV2_CHECK(a.prompt >= 0 && a.gen >= 0 && a.batch >= 1 && a.reps >= 1, dsv2::RangeError,
               "bench: --prompt, --gen must be >= 0 and --batch, --reps >= 1 (found {}, {}, {}, {})", a.prompt, a.gen,
               a.batch, a.reps);
    DSV2_CHECK(!a.depths.empty() && std::ranges::all_of(a.depths, [](std::int64_t d) { return d >= 0; }),
               dsv2::RangeError, "bench: --depth {}: expected one or more depths >= 0", fmt::join(a.depths, ","));
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

    // One batch of sequences per depth, each with its own timings.
    struct Depth {
        std::int64_t depth;
        std::vector<std::int64_t> seqs;
        std::vector<double> pp, tg;
    };
    std::vector<Depth> runs;
    std::int64_t capacity = 0;
    for (const std::int64_t d : a.depths) {
        runs.push_back({d, {}, {}, {}});
        capacity += a.batch * (d + std::max(a.prompt, a.gen));
    }
    const auto n_seqs = static_cast<std::int64_t>(runs.size()) * a.batch;
    auto session = model.new_session(ctx, capacity, n_seqs, 64, dsv2::parse_latent_format(a.cache));
    const char* cache_name = dsv2::latent_format_name(session.cache.format());
    const std::string attention = bench.attention(session.cache, cfg);  // how decode attention multiplies
    for (auto& r : runs)
        for (std::int64_t b = 0; b < a.batch; ++b) r.seqs.push_back(session.cache.add_sequence());
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(cfg.vocab_size - 1));
    auto random_tokens = [&](std::int64_t n) {
        std::vector<std::int32_t> t(static_cast<std::size_t>(n));
        for (auto& v : t) v = token(rng);
        return t;
    };
    // One step in which every sequence of a depth gets `n` new tokens; its
    // seconds.
    auto step = [&](const Depth& r, std::int64_t n) {
        std::vector<std::vector<std::int32_t>> toks;
        std::vector<dsv2::SequenceTokens> batch;
        for (std::int64_t b = 0; b < a.batch; ++b) toks.push_back(random_tokens(n));
        for (std::int64_t b = 0; b < a.batch; ++b)
            batch.push_back({r.seqs[static_cast<std::size_t>(b)], toks[static_cast<std::size_t>(b)]});
        const auto t0 = Clock::now();
        model.forward(ctx, session, batch, dsv2::Logits::last);
        bench.sync();
        return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    auto truncate = [&](const Depth& r) {
        for (auto s : r.seqs) session.cache.truncate(s, r.depth);
    };
    for (const auto& r : runs)
        for (std::int64_t done = 0; done < r.depth; done += 512) step(r, std::min<std::int64_t>(512, r.depth - done));

    for (int rep = 0; rep < a.reps; ++rep) {
        if (a.prompt > 0) {
            for (auto& r : runs) {
                truncate(r);
                r.pp.push_back(static_cast<double>(a.prompt * a.batch) / step(r, a.prompt));
            }
        }
        if (a.gen > 0) {
            std::vector<double> seconds(runs.size(), 0.0);
            for (auto& r : runs) {
                truncate(r);
                step(r, 1);  // warm-up, untimed: first decode step sizes the scratch
            }
            for (std::int64_t g = 1; g < a.gen; ++g)
                for (std::size_t i = 0; i < runs.size(); ++i) seconds[i] += step(runs[i], 1);
            for (std::size_t i = 0; i < runs.size(); ++i)
                runs[i].tg.push_back(static_cast<double>((a.gen - 1) * a.batch) / seconds[i]);
            bw.push_back(bench.bandwidth(2));
        }
    }

    const double weight_bytes = weight_bytes_per_token(model) / static_cast<double>(a.batch);
    const double resident = resident_weight_bytes(model);
    const double kv_per_token = static_cast<double>(session.cache.bytes_per_token());
    const double bw_median = median(bw);
    const auto [bw_min, bw_max] = std::minmax_element(bw.begin(), bw.end());
    const std::int64_t rss = peak_rss_bytes();
    // The figures of one depth.
    struct Report {
        double pp_rate, tg_rate, cache_bytes, decode_bytes, roofline;
    };
    const auto report = [&](const Depth& r) {
        Report x{};
        x.pp_rate = median(r.pp);
        x.tg_rate = median(r.tg);
        // Each sequence reads its own context, on average the depth plus half the steps.
        x.cache_bytes = kv_per_token * (static_cast<double>(r.depth) + static_cast<double>(a.gen) / 2.0);
        x.decode_bytes = weight_bytes + x.cache_bytes;
        std::vector<double> fractions;  // each decode rep against the probes around it
        for (std::size_t i = 0; i < r.tg.size(); ++i)
            fractions.push_back(x.decode_bytes * r.tg[i] / ((bw[i] + bw[i + 1]) / 2));
        x.roofline = median(fractions);
        return x;
    };
    std::vector<Report> reports;  // one per depth, in the order of `runs`
    for (const auto& r : runs) reports.push_back(report(r));

    const std::string name = a.model.empty() ? a.preset : a.model;
    if (a.json) {  // one object per depth, a line each
        for (std::size_t i = 0; i < runs.size(); ++i) {
            const Depth& r = runs[i];
            const Report& x = reports[i];
            fmt::print(
                "{{\"model\": \"{}\", \"backend\": \"{}\", \"dtype\": \"{}\", \"cache\": \"{}\", \"layers\": {}, \"threads\": {}, \"prompt\": {}, \"gen\": {}, "
                "\"depth\": {}, \"batch\": {}, \"reps\": {}, \"prefill_tokens_per_s\": {:.3f}, \"decode_tokens_per_s\": {:.3f}, "
                "\"decode_bytes_per_token\": {:.0f}, \"decode_weight_bytes_per_token\": {:.0f}, "
                "\"decode_cache_bytes_per_token\": {:.0f}, \"bandwidth_gb_s\": {:.3f}, \"decode_roofline_fraction\": {:.4f}, "
                "\"peak_rss_bytes\": {}, \"weight_bytes\": {:.0f}, \"kv_cache_bytes_per_token\": {:.0f}, \"build_seconds\": {:.2f}, "
                "\"depths_in_turn\": {}, \"attention\": \"{}\"}}\n",
                name, a.backend, a.dtype, cache_name, cfg.num_hidden_layers, bench.threads(), a.prompt, a.gen, r.depth, a.batch,
                a.reps, x.pp_rate, x.tg_rate, x.decode_bytes, weight_bytes, x.cache_bytes, bw_median / 1e9, x.roofline, rss,
                resident, kv_per_token, build_s, runs.size(), attention);
        }
        return 0;
    }
    fmt::print("model      {} ({} layers), dtype {}, {} latent cache, {} backend, {} threads, batch {}, built in {:.1f} s\n",
               name, cfg.num_hidden_layers, a.dtype, cache_name, a.backend, bench.threads(), a.batch, build_s);
    if (!attention.empty()) fmt::print("attention  {} (decode)\n", attention);
    if (bw.size() == 1) {
        fmt::print("bandwidth  {:.2f} GB/s ({}, best of 4 passes)\n", bw_median / 1e9, bench.probe_name());
    } else {
        fmt::print("bandwidth  {:.2f} GB/s ({}; median of {} probes, {:.2f}-{:.2f}, one before the reps "
                   "and one after each decode)\n",
                   bw_median / 1e9, bench.probe_name(), bw.size(), *bw_min / 1e9, *bw_max / 1e9);
    }
    if (runs.size() > 1 && a.gen > 0)
        fmt::print("turns      the {} depths decode in turns, one token each\n", runs.size());
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const Depth& r = runs[i];
        const Report& x = reports[i];
        if (a.prompt > 0)
            fmt::print("prefill    pp{:<5} @ depth {:<6} {:8.2f} tok/s  (median of {})\n", a.prompt, r.depth, x.pp_rate, a.reps);
        if (a.gen > 0) {
            fmt::print("decode     tg{:<5} @ depth {:<6} {:8.2f} tok/s  (median of {})", a.gen, r.depth, x.tg_rate, a.reps);
            if (i > 0)
                fmt::print("  {:+.1f}% against depth {}", 100 * (x.tg_rate / reports[0].tg_rate - 1), runs[0].depth);
            fmt::print("\nbytes/tok  {:.3f} GB = weights {:.3f} GB + latent cache {:.4f} GB\n", x.decode_bytes / 1e9,
                       weight_bytes / 1e9, x.cache_bytes / 1e9);
            fmt::print("roofline   {:.1f}% of the bandwidth probed around each rep (median; {:.2f} GB/s achieved)\n",
                       100 * x.roofline, x.decode_bytes * x.tg_rate / 1e9);
        }
    }
    fmt::print("memory     peak RSS {:.2f} GiB; weights {:.2f} GiB; latent cache {} bytes per token{}\n",
               static_cast<double>(rss) / (1 << 30), resident / (1 << 30), session.cache.bytes_per_token(),
               bench.memory());
    return 0;
}

template <class T>
int run_cpu(const Args& a) {
    CpuBench bench(a);
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
