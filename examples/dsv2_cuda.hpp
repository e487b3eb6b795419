// Entry points of the `dsv2` command on the CUDA backend, compiled by nvcc in
// dsv2_cuda.cu and called from dsv2.cpp (g++) when built with DSV2_WITH_CUDA.
#pragma once

#include <dsv2/model/sampler.hpp>

#include <cstdint>
#include <string>

namespace dsv2_bench {
struct Args;
}

namespace dsv2_cuda {

// `dsv2 logits --backend cuda`: one prefill, float32 logits [T, vocab] to `out` (.npy).
int logits(const std::string& model, const std::string& dtype, const std::string& tokens, const std::string& out);

// `dsv2 generate --backend cuda`: `prompt` text (byte-level models) or `tokens` ids.
int generate(const std::string& model, const std::string& dtype, const std::string& prompt, const std::string& tokens,
             std::int64_t max_new_tokens, const dsv2::SamplerOptions& sampling);

// `dsv2 bench --backend cuda`: dsv2_bench::run on Model<T, cuda>, the
// bandwidth probe a device-to-device copy.
int bench(const dsv2_bench::Args& args);

}  // namespace dsv2_cuda
