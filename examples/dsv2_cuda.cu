// The `dsv2` command's logits and generate on the GPU: the same steps as
// cmd_logits / cmd_generate in dsv2.cpp, with Model<T, cuda>.
#include <dsv2/cuda.cuh>

#include "dsv2_bench.hpp"
#include "dsv2_cuda.hpp"

#include <cstdio>
#include <thread>

namespace dsv2_cuda {
namespace {

template <class F>
int with_dtype(const std::string& dtype, F&& f) {
    if (dtype == "f64") return f.template operator()<double>();
    if (dtype == "f32") return f.template operator()<float>();
    if (dtype == "bf16") return f.template operator()<dsv2::bf16>();
    if (dtype == "f16") return f.template operator()<dsv2::f16>();
    DSV2_FAIL(dsv2::Unsupported, "--dtype {}: expected f64, f32, bf16 or f16", dtype);
}

void require_device() {
    DSV2_CHECK(dsv2::cuda_device_count() > 0, dsv2::Unsupported, "--backend cuda: no CUDA device is available");
}

}  // namespace

int logits(const std::string& model_dir, const std::string& dtype, const std::string& tokens_text,
           const std::string& out) {
    require_device();
    const auto tokens = dsv2::parse_token_ids(tokens_text, "--tokens");
    return with_dtype(dtype, [&]<class T>() {
        dsv2::Context<dsv2::cuda> ctx;
        const auto model = dsv2::load_model<T, dsv2::cuda>(ctx, model_dir);
        auto session = model.new_session(ctx, std::ssize(tokens), 1);
        const dsv2::SequenceTokens seq{session.cache.add_sequence(), tokens};
        const auto logits = model.forward(ctx, session, std::span(&seq, 1), dsv2::Logits::all);
        std::vector<dsv2::acc_t<T>> host(static_cast<std::size_t>(logits.numel()));
        dsv2::copy_to_host(ctx, logits.data, host.data(), logits.numel());
        const std::vector<float> values(host.begin(), host.end());
        dsv2::write_npy<float>(out, values, {logits.shape[0], logits.shape[1]});
        fmt::print("wrote {}: float32 logits of shape [{}, {}] ({} prefill, dtype {}, cuda)\n", out, logits.shape[0],
                   logits.shape[1], tokens.size(), dtype);
        return 0;
    });
}

int generate(const std::string& model_dir, const std::string& dtype, const std::string& prompt_text,
             const std::string& tokens_text, std::int64_t max_new_tokens, const dsv2::SamplerOptions& sampling) {
    require_device();
    return with_dtype(dtype, [&]<class T>() {
        dsv2::Context<dsv2::cuda> ctx;
        const auto model = dsv2::load_model<T, dsv2::cuda>(ctx, model_dir);
        const dsv2::ByteTokenizer bytes;
        const bool text_io = dsv2::ByteTokenizer::fits(model.config);
        std::vector<std::int32_t> prompt;
        if (!tokens_text.empty()) {
            prompt = dsv2::parse_token_ids(tokens_text, "--tokens");
        } else {
            DSV2_CHECK(text_io, dsv2::Unsupported,
                       "--prompt: this model's tokenizer is not supported yet (only the byte-level tokenizer of the "
                       "embedded model); pass token ids with --tokens");
            prompt = bytes.encode(prompt_text);
            fmt::print("{}", prompt_text);
        }
        dsv2::GenerateOptions opt;
        opt.max_new_tokens = max_new_tokens;
        opt.sampling = sampling;
        if (model.config.eos_token_id) opt.eos = static_cast<std::int32_t>(*model.config.eos_token_id);
        auto session = model.new_session(ctx, std::ssize(prompt) + max_new_tokens, 1);
        const auto result = dsv2::generate(ctx, model, session, {prompt}, opt, [&](std::size_t, std::int32_t id) {
            if (text_io && tokens_text.empty()) {
                if (id < 256) std::fputc(id, stdout);
            } else {
                fmt::print("{} ", id);
            }
            std::fflush(stdout);
        });
        fmt::print("\n");
        if (!tokens_text.empty()) fmt::print("ids: {}\n", fmt::join(result.tokens[0], ","));
        auto rate = [](std::int64_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
        fmt::print(stderr, "prefill {} tokens at {:.1f} tok/s; decode {} tokens at {:.1f} tok/s (cuda)\n",
                   result.prefill_tokens, rate(result.prefill_tokens, result.prefill_seconds), result.decode_tokens,
                   rate(result.decode_tokens, result.decode_seconds));
        return 0;
    });
}

namespace {

// dsv2_bench::run's hooks on the GPU. The probe copies 1 GiB device to
// device (read + write counted, the best of `passes`), as cudaMemcpy-based
// bandwidth tests do; random weights are drawn on the host's cores.
struct CudaBench {
    using Backend = dsv2::cuda;
    dsv2::Context<dsv2::cuda> ctx;
    dsv2::Tensor<std::uint8_t, dsv2::cuda, 1> from{{std::int64_t{1} << 30}}, to{{std::int64_t{1} << 30}};

    double bandwidth(int passes) {
        cudaEvent_t a, b;
        DSV2_CUDA_CHECK(cudaEventCreate(&a));
        DSV2_CUDA_CHECK(cudaEventCreate(&b));
        float best = 1e30f;
        for (int i = 0; i < passes + 1; ++i) {  // the first pass warms up
            DSV2_CUDA_CHECK(cudaEventRecord(a, ctx.stream));
            DSV2_CUDA_CHECK(cudaMemcpyAsync(to.data(), from.data(), static_cast<std::size_t>(from.numel()),
                                            cudaMemcpyDeviceToDevice, ctx.stream));
            DSV2_CUDA_CHECK(cudaEventRecord(b, ctx.stream));
            DSV2_CUDA_CHECK(cudaEventSynchronize(b));
            float ms = 0;
            DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
            if (i > 0) best = std::min(best, ms);
        }
        (void)cudaEventDestroy(a);
        (void)cudaEventDestroy(b);
        return 2.0 * static_cast<double>(from.numel()) / (static_cast<double>(best) * 1e-3);
    }
    void sync() { dsv2::synchronize(ctx); }
    static int fill_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }
    static int threads() { return 1; }  // the host thread that queues the work
    std::string probe_name() const {
        cudaDeviceProp prop{};
        DSV2_CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx.device));
        return fmt::format("{}, device-to-device copy of 1 GiB, read + write", prop.name);
    }
    std::string memory() const {
        std::size_t free = 0, total = 0;
        DSV2_CUDA_CHECK(cudaMemGetInfo(&free, &total));
        return fmt::format("; GPU memory in use {:.2f} of {:.2f} GiB", static_cast<double>(total - free) / (1 << 30),
                           static_cast<double>(total) / (1 << 30));
    }
    // mla_decode.cuh: 16-bit caches on the tensor cores; other types gather.
    template <class T>
    std::string attention(const dsv2::LatentCache<T, dsv2::cuda>&, const dsv2::Config&) const {
        if constexpr (std::is_same_v<T, dsv2::bf16> || std::is_same_v<T, dsv2::f16>)
            return "tensor-core products (mma.sync), q and P rounded to the cache's 16-bit type";
        return "gathered rows through the general attention";
    }
};

}  // namespace

int bench(const dsv2_bench::Args& args) {
    require_device();
    return with_dtype(args.dtype, [&]<class T>() {
        CudaBench b;
        return dsv2_bench::run<T>(args, b);
    });
}

}  // namespace dsv2_cuda
