// One DeepSeek-V2-Lite decoder layer (MLA + MoE, layer index 1): decode at
// 1K context and prefill of 512 tokens. Bytes per decode token: attention
// weights, router, shared and 6 routed experts, norms, plus the latent rows.
#include "bench_common.hpp"

namespace {

using namespace dsv2;
using dsv2::bench::Ctx;

template <class T>
void BM_layer(benchmark::State& state) {
    const std::int64_t context = state.range(0), n = state.range(1);
    Ctx ctx;
    Config cfg = Config::deepseek_v2_lite();
    cfg.num_hidden_layers = 2;
    DecoderLayer<T, cpu> layer(cfg, 1);
    init_random_fast(ctx, layer, 11, ctx.threads);
    Rotary<T, cpu> rotary(ctx, cfg);
    auto cache = LatentCache<T, cpu>::for_config(ctx, cfg, context + n, 1);
    {
        Tensor<T, cpu, 1> rows({cache.capacity_tokens() * cache.width() * cache.n_layers()});
        bench::fill(rows);
        std::copy(rows.data(), rows.data() + rows.numel(), cache.layer(0).data);
    }
    const auto seq = cache.add_sequence();
    cache.append(seq, context);
    Workspace<cpu> ws;
    Tensor<float, cpu, 2> h({n, cfg.hidden_size});
    bench::fill(h);
    Config one = cfg;
    one.num_hidden_layers = 1;
    one.first_k_dense_replace = 0;  // count_params of a single MoE layer...
    const auto p = count_params(one);
    const double layer_params = static_cast<double>(p.activated - (cfg.vocab_size * cfg.hidden_size + cfg.hidden_size));
    const double bytes = layer_params * sizeof(T) + static_cast<double>((context + n) * cfg.latent_dim() * sizeof(T));
    bench::run_timed(state, bytes, 2.0 * static_cast<double>(n) * layer_params, [&] {
        ws.reset();
        bench::BenchStep<T> step(ctx, rotary, cache, seq, n);
        layer.forward(ctx, ws, step.step, cache, 1, h.view());
        cache.truncate(seq, context);
        bench::fill(h);  // keep the residual stream O(1)
        benchmark::DoNotOptimize(h.data());
    });
}

// {cached context, new tokens}: decode at 1K, prefill of 512.
BENCHMARK(BM_layer<float>)->Args({1024, 1})->Args({0, 512})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_layer<bf16>)->Args({1024, 1})->Args({0, 512})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
