// e^x for 16 f32 lanes on AVX-512: the softmax of the MLA decode kernels
// and the SwiGLU activation.
//
// x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so r is exact to
// ~2^-32), e^r by its Taylor series to r^7 (truncation below 2^-27
// relative), and 2^n applied by vscalefps, which saturates to 0 or +inf and
// keeps NaN. Within 2 ulp of the correctly rounded value over the whole f32
// range (tests/test_kernels.cpp).
#pragma once

#include "dsv2/backend/cpu/gemv.hpp"

namespace dsv2::cpu_detail {

#if DSV2_X86_KERNELS
DSV2_AVX512 inline __m512 exp16(__m512 x) {
    // Beyond ±104, e^x is 0 or +inf in f32 either way; the clamp keeps n
    // finite. (min and max return their second operand for a NaN, so a NaN
    // stays one; x = -inf gives 0.)
    x = _mm512_maskz_max_ps(0xffff, _mm512_set1_ps(-104.0f), _mm512_maskz_min_ps(0xffff, _mm512_set1_ps(104.0f), x));
    const __m512 n = _mm512_maskz_roundscale_ps(0xffff, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(0xffff, p, n);
}
#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
