// A memory-bandwidth probe for roofline fractions: a STREAM-triad-like loop
// a[i] = b[i] + s * c[i] over arrays far larger than the caches, on the same
// number of threads as the run it is compared with, best of a few passes.
// Bytes counted per element: 3 * 8 (read b, read c, write a; write-allocate
// traffic is not counted, as STREAM does not count it).
//
// TriadProbe keeps its arrays, so a run can measure again next to each timed
// repetition: on a shared VM the bandwidth moves by 1.5x within a minute
// (docs/benchmarks.md), and a probe taken once at the start can then be far
// from what the repetitions had.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <new>

namespace dsv2 {

struct BandwidthResult {
    double bytes_per_s = 0;  // best pass
    std::int64_t array_bytes = 0;
    int threads = 1;
};

class TriadProbe {
public:
    // `array_bytes` per array (three arrays); 256 MiB each dwarfs any L3 here.
    explicit TriadProbe(int threads, std::int64_t array_bytes = std::int64_t{256} << 20)
        : threads_(std::max(threads, 1)), array_bytes_(array_bytes),
          n_(array_bytes / static_cast<std::int64_t>(sizeof(double))), a_(alloc()), b_(alloc()), c_(alloc()) {
        // First touch on the threads that will stream the data.
        double* pa = a_.get();
        double* pb = b_.get();
        double* pc = c_.get();
        const std::int64_t n = n_;
#pragma omp parallel for num_threads(threads_) schedule(static)
        for (std::int64_t i = 0; i < n; ++i) {
            pa[i] = 0.0;
            pb[i] = 1.0;
            pc[i] = 2.0;
        }
    }

    // The best of `passes` passes, in bytes/s.
    BandwidthResult measure(int passes = 4) {
        using clock = std::chrono::steady_clock;
        double* pa = a_.get();
        const double* pb = b_.get();
        const double* pc = c_.get();
        const std::int64_t n = n_;
        const double scalar = 3.0;
        double best = 0;
        for (int p = 0; p < passes; ++p) {
            const auto t0 = clock::now();
#pragma omp parallel for num_threads(threads_) schedule(static)
            for (std::int64_t i = 0; i < n; ++i) pa[i] = pb[i] + scalar * pc[i];
            const double s = std::chrono::duration<double>(clock::now() - t0).count();
            best = std::max(best, 3.0 * static_cast<double>(n) * sizeof(double) / s);
        }
        // Keep the stores observable.
        volatile double sink = pa[n / 2];
        (void)sink;
        return {best, array_bytes_, threads_};
    }

private:
    struct Free {
        void operator()(double* p) const { ::operator delete(p, std::align_val_t{64}); }
    };
    std::unique_ptr<double, Free> alloc() const {
        return std::unique_ptr<double, Free>(
            static_cast<double*>(::operator new(static_cast<std::size_t>(n_) * sizeof(double), std::align_val_t{64})));
    }

    int threads_;
    std::int64_t array_bytes_, n_;
    std::unique_ptr<double, Free> a_, b_, c_;
};

// One probe, measured once.
inline BandwidthResult measure_bandwidth(int threads, std::int64_t array_bytes = std::int64_t{256} << 20,
                                         int passes = 4) {
    return TriadProbe(threads, array_bytes).measure(passes);
}

}  // namespace dsv2
