// Seeded random weights, for demos, benchmarks and tests that need a model
// without a checkpoint. Linear weights are N(0, 1/fan_in) so activations
// stay O(1) through depth; norm weights are near 1; embeddings N(0, 1).
#pragma once

#include "dsv2/model/model.hpp"

#include <random>
#include <string_view>
#include <vector>

namespace dsv2 {

template <class T, class B, int R>
void upload(Context<B>& ctx, const std::vector<T>& host, Tensor<T, B, R>& t) {
    DSV2_CHECK(std::ssize(host) == t.numel(), ShapeError, "upload: {} values for a tensor of shape {}", host.size(),
               shape_str(t.shape()));
    copy_to_device(ctx, host.data(), t.data(), t.numel());
}

// Quantized weights take f32 values and quantize them as they land, so a
// loader holds at most one tensor's f32 copy (the int8 model of V2-Lite is
// built within a few hundred MB of its final size).
// (A template only so that CUDA-only translation units need no CPU context.)
template <class B>
    requires std::is_same_v<B, cpu>
void upload(Context<B>& ctx, const std::vector<float>& host, QuantizedMatrix<B>& q) {
    DSV2_CHECK(std::ssize(host) == q.numel(), ShapeError, "upload: {} values for an int8 matrix of shape {}",
               host.size(), shape_str(q.shape()));
    quantize_rows(host.data(), q.size(0), q.size(1), q.values.data(), q.scales.data(), ctx.threads);
}

template <class Module, class B>
void init_random(Context<B>& ctx, Module& module, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    module.for_each_weight([&](const std::string& name, auto& tensor) {
        using E = typename std::decay_t<decltype(tensor)>::value_type;
        const auto& shape = tensor.shape();
        const bool is_norm = std::string_view(name).ends_with("norm.weight");
        const bool is_bias = std::string_view(name).ends_with("bias");
        const bool is_embedding = std::string_view(name).ends_with("embed_tokens.weight");
        const double fan_in = static_cast<double>(shape.size() > 1 ? shape[1] : 1);
        const double stddev = is_norm ? 0.1 : is_bias ? 0.01 : is_embedding ? 1.0 : 1.0 / std::sqrt(fan_in);
        std::normal_distribution<double> normal(0.0, stddev);
        std::vector<E> host(static_cast<std::size_t>(tensor.numel()));
        for (auto& v : host) v = convert<E>(static_cast<float>((is_norm ? 1.0 : 0.0) + normal(rng)));
        upload(ctx, host, tensor);
    });
}

}  // namespace dsv2
