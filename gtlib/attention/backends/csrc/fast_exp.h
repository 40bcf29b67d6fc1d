// Shared by gtlib's compiled CPU kernels (fused_attention.cpp, window_attention.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace gtlib {

// exp for float32, vectorizable (Cephes' expf polynomial, relative error below 1e-7); exactly 0
// for x = -inf and below the normal range, inf above it, NaN for NaN.
inline __attribute__((always_inline)) float fast_exp(float x) {
  constexpr float lo = -87.33654475f, hi = 88.72283935f;
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  y *= scale;
  y = x < lo ? 0.0f : y;
  y = x > hi ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

// exp: the vectorizable one for float32, libm for float64 (whose gradients are checked).
template <typename T>
inline T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return fast_exp(x);
  } else {
    return std::exp(x);
  }
}

}  // namespace gtlib
