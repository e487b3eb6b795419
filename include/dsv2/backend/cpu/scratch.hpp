// Per-thread scratch for the CPU kernels: a 64-byte aligned f32 buffer per
// thread and slot that grows to the largest request and is kept, so a
// kernel called every decode step allocates (and page-faults) only once.
#pragma once

#include "dsv2/backend/cpu/context.hpp"

#include <cstdint>
#include <memory>

namespace dsv2::cpu_detail {

// Slots of the kernels that hold their buffers at the same time.
enum ScratchSlot : int {
    kScratchPanels = 0,      // gemm_panels.hpp: the packed activations
    kScratchWeightTile = 1,  // gemm_panels.hpp: a widened weight tile
    kScratchLatentTile = 2,  // mla_decode_avx512.hpp: a split's widened tile and scores
    kScratchQuery = 3,       // mla_decode.hpp: the permuted query, read by every split
    kScratchSplits = 4,      // mla_decode.hpp: the splits' outputs, maxima and sums, and their merge
};

template <int Slot>
inline float* f32_scratch(std::int64_t elements) {
    struct Release {
        void operator()(float* p) const { Memory<cpu>::release(p); }
    };
    thread_local std::unique_ptr<float, Release> buf;
    thread_local std::int64_t size = 0;
    if (elements > size) {
        buf.reset();
        buf.reset(static_cast<float*>(Memory<cpu>::allocate(static_cast<std::size_t>(elements) * sizeof(float))));
        size = elements;
    }
    return buf.get();
}

}  // namespace dsv2::cpu_detail
