// Multi-head Latent Attention at the DeepSeek-V2-Lite shape (one layer):
// absorbed vs naive, prefill (N = 512 from an empty cache) and decode
// (N = 1) over contexts of 128 to 32K cached tokens. Decode bytes are the
// layer's weights plus the latent rows read; the naive path also
// decompresses K and V for the whole context, which is where it loses.
// int8 (q8) keeps the cache in bf16 and counts its weights' real bytes
// (int8 values plus one f32 scale per row). Decode at 4K and 32K also runs
// "cold" (fourth argument 1): every cache evicted before each call, as in a
// model, where the other layers' weights stream through between visits.
#include "bench_common.hpp"

namespace {

using namespace dsv2;
using dsv2::bench::Ctx;

template <class T>
void BM_mla(benchmark::State& state) {
    const auto path = state.range(0) == 0 ? AttentionPath::absorbed : AttentionPath::naive;
    const std::int64_t context = state.range(1), n = state.range(2);
    const bool cold = state.range(3) != 0;
    Ctx ctx;
    Config cfg = Config::deepseek_v2_lite();
    cfg.num_hidden_layers = 1;
    MLA<T, cpu> mla(cfg);
    init_random_fast(ctx, mla, 3, ctx.threads);
    mla.path = path;
    Rotary<T, cpu> rotary(ctx, cfg);
    auto cache = MLA<T, cpu>::Cache::for_config(ctx, cfg, context + n, 1);
    {
        // Cached rows of magnitude ~1, as kv_a_layernorm leaves them.
        Tensor<dense_t<T>, cpu, 1> rows({cache.capacity_tokens() * cache.width()});
        bench::fill(rows);
        std::copy(rows.data(), rows.data() + rows.numel(), cache.layer(0).data);
    }
    const auto seq = cache.add_sequence();
    cache.append(seq, context);
    Workspace<cpu> ws;
    Tensor<float, cpu, 2> x({n, cfg.hidden_size}), y({n, cfg.hidden_size});
    bench::fill(x);

    double weight_params = 0, weight_bytes = 0;
    mla.for_each_weight([&](const std::string&, auto& t) {
        weight_params += static_cast<double>(t.numel());
        weight_bytes += static_cast<double>(t.bytes());
    });
    const double s = static_cast<double>(context + n), h = static_cast<double>(cfg.num_attention_heads);
    const double cache_bytes = s * static_cast<double>(cfg.latent_dim() * sizeof(dense_t<T>));
    const double attn_flops = path == AttentionPath::absorbed
                                  ? 2.0 * h * s * static_cast<double>(n) * (576 + 512)
                                  : 2.0 * s * 512 * h * 256 + 2.0 * h * s * static_cast<double>(n) * (192 + 128);
    const double bytes = weight_bytes + cache_bytes;
    const double flops = 2.0 * static_cast<double>(n) * weight_params + attn_flops;
    bench::run_timed(state, bytes, flops, [&] {
        ws.reset();
        bench::BenchStep<T> step(ctx, rotary, cache, seq, n);
        mla.forward(ctx, ws, step.step, cache, 0, x.cview(), y.view());
        cache.truncate(seq, context);
        benchmark::DoNotOptimize(y.data());
    }, cold);
}

// {path (0 absorbed, 1 naive), cached context, new tokens, cold}
void shapes(benchmark::internal::Benchmark* b) {
    for (int path : {0, 1}) {
        b->Args({path, 0, 512, 0});  // prefill
        for (std::int64_t s : {128, 1024, 4096, 32768}) b->Args({path, s, 1, 0});  // decode
        if (path == 0)
            for (std::int64_t s : {4096, 32768}) b->Args({path, s, 1, 1});  // decode, cold
    }
    b->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK(BM_mla<float>)->Apply(shapes);
BENCHMARK(BM_mla<bf16>)->Apply(shapes);
BENCHMARK(BM_mla<q8>)->Apply(shapes);

}  // namespace

BENCHMARK_MAIN();
