// dsv2 — DeepSeek-V2 in header-only C++20. Include this for the CPU backend
// and everything above it; include <dsv2/cuda.cuh> (nvcc) for the GPU.
#pragma once

#include "dsv2/backend/cpu.hpp"  // must precede the components: they check the Backend concept

#include "dsv2/core/dtype.hpp"
#include "dsv2/core/error.hpp"
#include "dsv2/core/tensor.hpp"
#include "dsv2/core/workspace.hpp"
#include "dsv2/io/checkpoint.hpp"
#include "dsv2/io/npy.hpp"
#include "dsv2/io/safetensors.hpp"
#include "dsv2/io/token_ids.hpp"
#include "dsv2/io/tokenizer.hpp"
#include "dsv2/layers/attention.hpp"
#include "dsv2/layers/balance.hpp"
#include "dsv2/layers/capacity.hpp"
#include "dsv2/layers/decoder_layer.hpp"
#include "dsv2/layers/gqa.hpp"
#include "dsv2/layers/kv_cache.hpp"
#include "dsv2/layers/latent_cache.hpp"
#include "dsv2/layers/mla.hpp"
#include "dsv2/layers/mlp.hpp"
#include "dsv2/layers/moe.hpp"
#include "dsv2/layers/moe_variants.hpp"
#include "dsv2/layers/rmsnorm.hpp"
#include "dsv2/layers/rotary.hpp"
#include "dsv2/layers/router.hpp"
#include "dsv2/model/config.hpp"
#include "dsv2/model/generate.hpp"
#include "dsv2/model/model.hpp"
#include "dsv2/model/params.hpp"
#include "dsv2/model/random.hpp"
#include "dsv2/model/sampler.hpp"
#include "dsv2/model/variants.hpp"

namespace dsv2 {
static_assert(Backend<cpu>, "the CPU backend must satisfy the Backend concept");
}
