// The kernels, written once over a small SIMD vector type `V` and compiled once per instruction set:
// SB_LEVEL 0 portable C++ (whatever the compiler makes of it), 1 AVX2+FMA, 2 AVX-512 (F/VL/BW/DQ),
// 3 AVX-512 with BF16 (adds a vdpbf16ps dense bf16 GEMV). Everything except the one exported table
// function sits in an anonymous namespace, so code built for one instruction set can never be picked by
// the linker for another, and no standard-library template is instantiated here for the same reason.
//
// Two loop shapes, shared by every format so that dense and sparse compare like for like:
//  - GEMV (batch 1): one output row at a time, vector FMAs along K, 2-4 independent accumulators.
//  - SpMM (batch 2-32): one output row at a time; each kept weight w at column k does
//    acc[0:B] += w * xt[k, 0:B] with x transposed, so a weight is read once for the whole batch.
// The input-major kernels (any batch) turn it around: for each kept input k, y[b, cols] += x[b, k] *
// W[cols, k] over a tile of output columns held in an accumulator buffer, so the bytes read are those
// of the kept inputs only.
#include <cstdint>
#include <cstring>

#include "kernels.h"

#if SB_LEVEL >= 1
#include <immintrin.h>
#endif

namespace sb {
namespace {

inline float tof(float f) { return f; }
inline float tof(uint16_t h) {  // bf16 -> fp32 is exact: the bf16 bits are the top half of the fp32
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int popc(uint64_t v) { return __builtin_popcountll(v); }

// Lookup tables, built at compile time.
struct Luts {
  int32_t pos8[256][8];    // the positions of all set bits of m, in order (the rest 0)
  int32_t expand[256][8];  // lane i of an 8-bit mask m -> rank of lane i among m's set bits, with the
                           // sign bit set where bit i is set (a blend then zeroes the other lanes)
  int32_t pos4[256][4];    // the positions of the first four set bits of m (0 where fewer)
  constexpr Luts() : pos8(), expand(), pos4() {
    for (int m = 0; m < 256; ++m) {
      int rank = 0;
      for (int i = 0; i < 8; ++i) {
        if (m >> i & 1) pos8[m][rank] = i;
        expand[m][i] = (m >> i & 1) ? static_cast<int32_t>(static_cast<uint32_t>(rank) | 0x80000000u) : rank;
        if (m >> i & 1) {
          if (rank < 4) pos4[m][rank] = i;
          ++rank;
        }
      }
    }
  }
};
constexpr Luts LUT{};

#if SB_LEVEL == 0
constexpr const char* kName = "portable";
struct V {
  static constexpr int W = 8;
  using Bits = uint16_t;  // 2W mask bits for the N:M gather
  float r[8];
  static V zero() { V v; for (int i = 0; i < 8; ++i) v.r[i] = 0.f; return v; }
  static V set1(float f) { V v; for (int i = 0; i < 8; ++i) v.r[i] = f; return v; }
  template <class T> static V load(const T* p) { V v; for (int i = 0; i < 8; ++i) v.r[i] = tof(p[i]); return v; }
  static V fma(V a, V b, V c) { for (int i = 0; i < 8; ++i) c.r[i] += a.r[i] * b.r[i]; return c; }
  static V add(V a, V b) { for (int i = 0; i < 8; ++i) a.r[i] += b.r[i]; return a; }
  float sum() const { float s = 0.f; for (int i = 0; i < 8; ++i) s += r[i]; return s; }
  void store(float* p) const { for (int i = 0; i < 8; ++i) p[i] = r[i]; }
  template <class T> static V expand(const T* p, unsigned m) {
    V v; int j = 0;
    for (int i = 0; i < 8; ++i) v.r[i] = (m >> i & 1) ? tof(p[j++]) : 0.f;
    return v;
  }
  static V compress2(const float* x, unsigned m) {
    V v; int j = 0;
    for (int i = 0; i < 16 && j < 8; ++i) if (m >> i & 1) v.r[j++] = x[i];
    return v;
  }
  static V quads(const float* x, const int32_t* bc) {
    V v;
    for (int q = 0; q < 2; ++q) for (int i = 0; i < 4; ++i) v.r[q * 4 + i] = x[4 * static_cast<int64_t>(bc[q]) + i];
    return v;
  }
};

#elif SB_LEVEL == 1
constexpr const char* kName = "avx2";
struct V {
  static constexpr int W = 8;
  using Bits = uint16_t;
  __m256 r;
  static V zero() { return {_mm256_setzero_ps()}; }
  static V set1(float f) { return {_mm256_set1_ps(f)}; }
  static V load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static V load(const uint16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.r, b.r, c.r)}; }
  static V add(V a, V b) { return {_mm256_add_ps(a.r, b.r)}; }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  void store(float* p) const { _mm256_storeu_ps(p, r); }
  // Reads 8 values from p (the packer pads the value array), moves value j to the lane of the j-th set
  // bit of m and zeroes the lanes whose bit is clear.
  template <class T> static V expand(const T* p, unsigned m) {
    __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(LUT.expand[m]));
    return {_mm256_blendv_ps(_mm256_setzero_ps(), _mm256_permutevar8x32_ps(load(p).r, idx), _mm256_castsi256_ps(idx))};
  }
  // x[0:16] with 16 mask bits, four set in each byte: the 8 selected x values, in column order.
  static V compress2(const float* x, unsigned m) {
    __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(LUT.pos4[m & 255]));
    __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(LUT.pos4[(m >> 8) & 255]));
    __m256i idx = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x), idx);
    __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + 8), idx);
    return {_mm256_blend_ps(a, b, 0xF0)};
  }
  static V quads(const float* x, const int32_t* bc) {
    __m128 lo = _mm_loadu_ps(x + 4 * static_cast<int64_t>(bc[0]));
    __m128 hi = _mm_loadu_ps(x + 4 * static_cast<int64_t>(bc[1]));
    return {_mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1)};
  }
};

#else  // SB_LEVEL 2 and 3: AVX-512
#if SB_LEVEL == 2
constexpr const char* kName = "avx512";
#else
constexpr const char* kName = "avx512bf16";
#endif
struct V {
  static constexpr int W = 16;
  using Bits = uint32_t;
  __m512 r;
  static V zero() { return {_mm512_setzero_ps()}; }
  static V set1(float f) { return {_mm512_set1_ps(f)}; }
  static V load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static V load(const uint16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  }
  static V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.r, b.r, c.r)}; }
  static V add(V a, V b) { return {_mm512_add_ps(a.r, b.r)}; }
  float sum() const { return _mm512_reduce_add_ps(r); }
  void store(float* p) const { _mm512_storeu_ps(p, r); }
  template <class T> static V expand(const T* p, unsigned m) {
    return {_mm512_maskz_expand_ps(static_cast<__mmask16>(m), load(p).r)};
  }
  static V compress2(const float* x, unsigned m) {
    const __m128i* t = reinterpret_cast<const __m128i*>(LUT.pos4[0]);
    __m128i q0 = _mm_loadu_si128(t + (m & 255));
    __m128i q1 = _mm_add_epi32(_mm_loadu_si128(t + ((m >> 8) & 255)), _mm_set1_epi32(8));
    __m128i q2 = _mm_add_epi32(_mm_loadu_si128(t + ((m >> 16) & 255)), _mm_set1_epi32(16));
    __m128i q3 = _mm_add_epi32(_mm_loadu_si128(t + ((m >> 24) & 255)), _mm_set1_epi32(24));
    __m512i idx = _mm512_inserti32x4(_mm512_castsi128_si512(q0), q1, 1);
    idx = _mm512_inserti32x4(_mm512_inserti32x4(idx, q2, 2), q3, 3);
    return {_mm512_permutex2var_ps(_mm512_loadu_ps(x), idx, _mm512_loadu_ps(x + 16))};
  }
  static V quads(const float* x, const int32_t* bc) {
    __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(x + 4 * static_cast<int64_t>(bc[0])));
    v = _mm512_insertf32x4(v, _mm_loadu_ps(x + 4 * static_cast<int64_t>(bc[1])), 1);
    v = _mm512_insertf32x4(v, _mm_loadu_ps(x + 4 * static_cast<int64_t>(bc[2])), 2);
    return {_mm512_insertf32x4(v, _mm_loadu_ps(x + 4 * static_cast<int64_t>(bc[3])), 3)};
  }
};
#endif

constexpr int W = V::W;
constexpr unsigned kLaneMask = (1u << W) - 1;

inline unsigned bits2w(const uint8_t* p) {  // the 2W mask bits of 2W columns, little-endian
  V::Bits b;
  std::memcpy(&b, p, sizeof(b));
  return b;
}

// ---------------------------------------------------------------- batch 1 (GEMV)

// Four rows at a time, one FMA chain each: four streams of weights in flight per thread read faster
// from memory than one row with four chains (1.3x at 4096x4096 fp32, 2 threads, weights from DRAM).
template <class T>
void gemv_dense(const Args& a, int64_t r0, int64_t r1) {
  const T* w = static_cast<const T*>(a.values);
  const float* x = a.xpad;
  const int64_t K = a.K;
  int64_t n = r0;
  for (; n + 4 <= r1; n += 4) {
    const T* q0 = w + n * K;
    const T* q1 = q0 + K;
    const T* q2 = q1 + K;
    const T* q3 = q2 + K;
    V s0 = V::zero(), s1 = V::zero(), s2 = V::zero(), s3 = V::zero();
    int64_t k = 0;
    for (; k + W <= K; k += W) {
      const V xv = V::load(x + k);
      s0 = V::fma(V::load(q0 + k), xv, s0);
      s1 = V::fma(V::load(q1 + k), xv, s1);
      s2 = V::fma(V::load(q2 + k), xv, s2);
      s3 = V::fma(V::load(q3 + k), xv, s3);
    }
    float t0 = s0.sum(), t1 = s1.sum(), t2 = s2.sum(), t3 = s3.sum();
    for (; k < K; ++k) {
      t0 += tof(q0[k]) * x[k];
      t1 += tof(q1[k]) * x[k];
      t2 += tof(q2[k]) * x[k];
      t3 += tof(q3[k]) * x[k];
    }
    a.y[n] = t0;
    a.y[n + 1] = t1;
    a.y[n + 2] = t2;
    a.y[n + 3] = t3;
  }
  for (; n < r1; ++n) {  // the rows left over: the same order of sums, so a row's result never depends on the split
    const T* row = w + n * K;
    V s0 = V::zero();
    int64_t k = 0;
    for (; k + W <= K; k += W) s0 = V::fma(V::load(row + k), V::load(x + k), s0);
    float s = s0.sum();
    for (; k < K; ++k) s += tof(row[k]) * x[k];
    a.y[n] = s;
  }
}

#if SB_LEVEL == 3
// bf16 weights against bf16-rounded activations (xbf): vdpbf16ps multiplies pairs and accumulates fp32.
void gemv_dense_dpbf16(const Args& a, int64_t r0, int64_t r1) {
  const uint16_t* w = static_cast<const uint16_t*>(a.values);
  const uint16_t* x = a.xbf;
  const int64_t K = a.K;
  auto dot = [](__m512 s, const uint16_t* r, const uint16_t* xv) {
    return _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(r), (__m512bh)_mm512_loadu_si512(xv));
  };
  int64_t n = r0;
  for (; n + 4 <= r1; n += 4) {  // four rows, one chain each, as gemv_dense
    const uint16_t* q = w + n * K;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      s0 = dot(s0, q + k, x + k);
      s1 = dot(s1, q + K + k, x + k);
      s2 = dot(s2, q + 2 * K + k, x + k);
      s3 = dot(s3, q + 3 * K + k, x + k);
    }
    float t[4] = {_mm512_reduce_add_ps(s0), _mm512_reduce_add_ps(s1), _mm512_reduce_add_ps(s2), _mm512_reduce_add_ps(s3)};
    for (int r = 0; r < 4; ++r) {
      for (int64_t kk = k; kk < K; ++kk) t[r] += tof(q[r * K + kk]) * tof(x[kk]);
      a.y[n + r] = t[r];
    }
  }
  for (; n < r1; ++n) {  // the same order of sums as above, so a row's result never depends on the split
    const uint16_t* row = w + n * K;
    __m512 s0 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) s0 = dot(s0, row + k, x + k);
    float s = _mm512_reduce_add_ps(s0);
    for (; k < K; ++k) s += tof(row[k]) * tof(x[k]);
    a.y[n] = s;
  }
}
#endif

// N:M at 50% (2:4, 4:8): every byte of the mask holds four set bits, so the values of 2W columns are
// exactly W consecutive values and no offsets need computing; x is gathered to the kept columns.
template <class T>
void gemv_nm(const Args& a, int64_t r0, int64_t r1) {
  const T* vals = static_cast<const T*>(a.values);
  const float* x = a.xpad;
  const int64_t K = a.K, half = a.K / 2;
  constexpr int C = 2 * W;
  for (int64_t n = r0; n < r1; ++n) {
    const T* v = vals + n * half;
    const uint8_t* m = a.mask + n * a.kbytes;
    V s0 = V::zero(), s1 = V::zero();
    int64_t k = 0, j = 0;
    for (; k + 2 * C <= K; k += 2 * C, j += 2 * W) {
      s0 = V::fma(V::load(v + j), V::compress2(x + k, bits2w(m + k / 8)), s0);
      s1 = V::fma(V::load(v + j + W), V::compress2(x + k + C, bits2w(m + (k + C) / 8)), s1);
    }
    for (; k + C <= K; k += C, j += W) s0 = V::fma(V::load(v + j), V::compress2(x + k, bits2w(m + k / 8)), s0);
    float s = V::add(s0, s1).sum();
    for (; k < K; ++k)
      if (m[k >> 3] >> (k & 7) & 1) s += tof(v[j++]) * x[k];
    a.y[n] = s;
  }
}

// Bitmask: 64 columns per mask word; the values of one word start where the previous word's ended.
template <class T>
void gemv_bitmask(const Args& a, int64_t r0, int64_t r1) {
  const T* vals = static_cast<const T*>(a.values);
  const uint64_t* mask = reinterpret_cast<const uint64_t*>(a.mask);
  const float* x = a.xpad;
  for (int64_t n = r0; n < r1; ++n) {
    const uint64_t* mw = mask + n * a.kwords;
    const T* v = vals + a.ptr[n];
    V acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
    for (int64_t wi = 0; wi < a.kwords; ++wi) {
      const uint64_t m = mw[wi];
      if (!m) continue;
      const float* xw = x + wi * 64;
      int off = 0;
      const uint8_t* mb = reinterpret_cast<const uint8_t*>(mw + wi);
#pragma GCC unroll 8
      for (int j = 0; j < 64 / W; ++j) {
        unsigned b;
        if constexpr (W == 8) b = mb[j];
        else b = static_cast<unsigned>(m >> (j * W)) & kLaneMask;
        acc[j & 3] = V::fma(V::expand(v + off, b), V::load(xw + j * W), acc[j & 3]);
        off += popc(b);
      }
      v += popc(m);
    }
    a.y[n] = V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3])).sum();
  }
}

// CSR with 16-bit column indices inside column tiles of `tile` columns: x is gathered per value.
template <class T>
void gemv_csr16(const Args& a, int64_t r0, int64_t r1) {
  const T* v = static_cast<const T*>(a.values);
  const uint16_t* c = a.cols;
  for (int64_t n = r0; n < r1; ++n) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (int64_t t = 0; t < a.ntiles; ++t) {
      const float* xb = a.xpad + t * a.tile;
      int64_t j = a.ptr[n * a.ntiles + t];
      const int64_t j1 = a.ptr[n * a.ntiles + t + 1];
      for (; j + 4 <= j1; j += 4) {
        s0 += tof(v[j]) * xb[c[j]];
        s1 += tof(v[j + 1]) * xb[c[j + 1]];
        s2 += tof(v[j + 2]) * xb[c[j + 2]];
        s3 += tof(v[j + 3]) * xb[c[j + 3]];
      }
      for (; j < j1; ++j) s0 += tof(v[j]) * xb[c[j]];
    }
    a.y[n] = (s0 + s1) + (s2 + s3);
  }
}

// Block sparse; rows [r0, r1) here are block rows.
template <class T>
void gemv_bsr(const Args& a, int64_t r0, int64_t r1) {
  const T* vals = static_cast<const T*>(a.values);
  const float* x = a.xpad;
  const int64_t bh = a.bh, bw = a.bw;
  for (int64_t br = r0; br < r1; ++br) {
    const int64_t b0 = a.ptr[br], nb = a.ptr[br + 1] - b0;
    const int32_t* bc = a.bcols + b0;
    for (int64_t r = 0; r < bh; ++r) {
      const int64_t n = br * bh + r;
      if (n >= a.N) break;
      const T* v = vals + b0 * bh * bw + r * nb * bw;  // this row's values: (nb, bw)
      V s0 = V::zero();
      float s = 0.f;
      if (bw % W == 0) {
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t q = 0; q < bw; q += W) s0 = V::fma(V::load(v + b * bw + q), V::load(x + bc[b] * bw + q), s0);
      } else if (bw == 4) {
        int64_t b = 0;
        for (; b + W / 4 <= nb; b += W / 4) s0 = V::fma(V::load(v + b * 4), V::quads(x, bc + b), s0);
        for (; b < nb; ++b)
          for (int q = 0; q < 4; ++q) s += tof(v[b * 4 + q]) * x[bc[b] * 4 + q];
      } else {
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t q = 0; q < bw; ++q) s += tof(v[b * bw + q]) * x[bc[b] * bw + q];
      }
      a.y[n] = s + s0.sum();
    }
  }
}

// ---------------------------------------------------------------- batch 2-32 (SpMM)

// acc[0:bpad] += w * xt[k, 0:bpad] for a list of (w, k). With few vectors per row of xt, one FMA chain
// would wait on its own latency at every weight, so S independent sets of accumulators take turns.
template <int NV>
struct Acc {
  static constexpr int S = NV >= 3 ? 1 : 4 / NV;
  V v[S][NV];
  Acc() {
    for (int s = 0; s < S; ++s)
      for (int q = 0; q < NV; ++q) v[s][q] = V::zero();
  }
  void add(int s, float w, const float* xr) {
    const V wb = V::set1(w);
    for (int q = 0; q < NV; ++q) v[s][q] = V::fma(wb, V::load(xr + q * W), v[s][q]);
  }
  // count weights vals[0:count]; row(j) is the xt row of weight j.
  template <class T, class Row>
  void run(const T* vals, Row row, int64_t count) {
    int64_t j = 0;
    for (; j + S <= count; j += S) {
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) add(s, tof(vals[j + s]), row(j + s));
    }
    for (; j < count; ++j) add(0, tof(vals[j]), row(j));
  }
  void store(const Args& a, int64_t n) const {
    float tmp[NV * W];
    for (int q = 0; q < NV; ++q) {
      V t = v[0][q];
      for (int s = 1; s < S; ++s) t = V::add(t, v[s][q]);
      t.store(tmp + q * W);
    }
    for (int64_t b = 0; b < a.B; ++b) a.y[b * a.N + n] = tmp[b];
  }
};

// The columns of the set bits of mask bytes [0, nbytes), plus base, into pos; returns how many. A table
// gives each byte's positions at once: no branch depends on the data, unlike a loop over set bits.
constexpr int64_t kChunkBytes = 64;  // 512 columns per decoded chunk
inline int64_t decode_bits(const uint8_t* bytes, int64_t nbytes, int64_t base, int32_t* pos) {
  int64_t c = 0;
  for (int64_t i = 0; i < nbytes; ++i) {
    const unsigned b = bytes[i];
    const int32_t at = static_cast<int32_t>(base + i * 8);
    for (int q = 0; q < 8; ++q) pos[c + q] = LUT.pos8[b][q] + at;
    c += popc(b);
  }
  return c;
}

// Batched kernels for the two mask formats: decode a chunk of a row, then one pass over its values.
template <class T, int NV>
void spmm_mask_row(const Args& a, const uint8_t* m, int64_t nbytes, const T* v, int64_t n) {
  int32_t pos[kChunkBytes * 8 + 8];
  Acc<NV> acc;
  for (int64_t kb = 0; kb < nbytes; kb += kChunkBytes) {
    const int64_t c = decode_bits(m + kb, nbytes - kb < kChunkBytes ? nbytes - kb : kChunkBytes, kb * 8, pos);
    acc.run(v, [&](int64_t j) { return a.xt + static_cast<int64_t>(pos[j]) * a.bpad; }, c);
    v += c;
  }
  acc.store(a, n);
}

template <class T, int NV>
void spmm_dense_nv(const Args& a, int64_t r0, int64_t r1) {
  const T* w = static_cast<const T*>(a.values);
  for (int64_t n = r0; n < r1; ++n) {
    Acc<NV> acc;
    acc.run(w + n * a.K, [&](int64_t k) { return a.xt + k * a.bpad; }, a.K);
    acc.store(a, n);
  }
}

template <class T, int NV>
void spmm_nm_nv(const Args& a, int64_t r0, int64_t r1) {
  const T* vals = static_cast<const T*>(a.values);
  for (int64_t n = r0; n < r1; ++n) spmm_mask_row<T, NV>(a, a.mask + n * a.kbytes, a.kbytes, vals + n * (a.K / 2), n);
}

template <class T, int NV>
void spmm_bitmask_nv(const Args& a, int64_t r0, int64_t r1) {
  const T* vals = static_cast<const T*>(a.values);
  const int64_t nbytes = a.kwords * 8;
  for (int64_t n = r0; n < r1; ++n) spmm_mask_row<T, NV>(a, a.mask + n * nbytes, nbytes, vals + a.ptr[n], n);
}

template <class T, int NV>
void spmm_csr16_nv(const Args& a, int64_t r0, int64_t r1) {
  const T* v = static_cast<const T*>(a.values);
  for (int64_t n = r0; n < r1; ++n) {
    Acc<NV> acc;
    for (int64_t t = 0; t < a.ntiles; ++t) {
      const float* xb = a.xt + t * a.tile * a.bpad;
      const int64_t j0 = a.ptr[n * a.ntiles + t];
      const uint16_t* c = a.cols + j0;
      acc.run(v + j0, [&](int64_t j) { return xb + static_cast<int64_t>(c[j]) * a.bpad; },
              a.ptr[n * a.ntiles + t + 1] - j0);
    }
    acc.store(a, n);
  }
}

template <class T, int NV>
void spmm_bsr_nv(const Args& a, int64_t r0, int64_t r1) {
  const T* vals = static_cast<const T*>(a.values);
  for (int64_t br = r0; br < r1; ++br) {
    const int64_t b0 = a.ptr[br], nb = a.ptr[br + 1] - b0;
    const int32_t* bc = a.bcols + b0;
    const int64_t bw = a.bw;
    for (int64_t r = 0; r < a.bh; ++r) {
      const int64_t n = br * a.bh + r;
      if (n >= a.N) break;
      Acc<NV> acc;  // this row's values are (nb, bw): weight j sits at column bc[j / bw] * bw + j % bw
      acc.run(vals + b0 * a.bh * bw + r * nb * bw,
              [&](int64_t j) { return a.xt + (static_cast<int64_t>(bc[j / bw]) * bw + j % bw) * a.bpad; }, nb * bw);
      acc.store(a, n);
    }
  }
}

// bpad / W vectors per accumulator: 1-4 (batch up to 32 at W = 8).
#define SB_SPMM(name)                                                            \
  template <class T>                                                             \
  void name(const Args& a, int64_t r0, int64_t r1) {                             \
    switch (a.bpad / W) {                                                        \
      case 1: return name##_nv<T, 1>(a, r0, r1);                                 \
      case 2: return name##_nv<T, 2>(a, r0, r1);                                 \
      case 3: return name##_nv<T, 3>(a, r0, r1);                                 \
      default: return name##_nv<T, 4>(a, r0, r1);                                \
    }                                                                            \
  }
SB_SPMM(spmm_dense)
SB_SPMM(spmm_nm)
SB_SPMM(spmm_bitmask)
SB_SPMM(spmm_csr16)
SB_SPMM(spmm_bsr)
#undef SB_SPMM

// ---------------------------------------------------------------- input-major (activation sparsity)

// Accumulators of one thread: B rows of a tile of output columns, at most kAccFloats in all (32 KiB, so
// they stay in L1 while the weight columns stream past). A tile is a whole number of segments.
constexpr int64_t kAccFloats = 8192;
alignas(64) thread_local float t_acc[kAccFloats];

inline int64_t in_tile(int64_t B) {
  const int64_t t = kAccFloats / B / kInSeg * kInSeg;
  return t < kInSeg ? kInSeg : t;
}

inline void in_store(const Args& a, const float* acc, int64_t stride, int64_t t0, int64_t wdt) {
  for (int64_t b = 0; b < a.B; ++b) std::memcpy(a.y + b * a.N + t0, acc + b * stride, sizeof(float) * wdt);
}

inline void in_zero(float* acc, int64_t n) { std::memset(acc, 0, sizeof(float) * n); }

// ab[0:wdt] += x0 * r0[0:wdt] (+ x1 * r1 + ...), G rows at a time; pf: the rows of the next group, one
// cache line of each prefetched per step so they arrive before they are read.
template <class T, int G>
inline void in_axpy(float* ab, const T* const* r, const float* xg, const T* const* pf, int64_t wdt) {
  V xv[G];
  for (int g = 0; g < G; ++g) xv[g] = V::set1(xg[g]);
  int64_t c = 0;
  for (; c + W <= wdt; c += W) {
    if (pf)
      for (int g = 0; g < G; ++g) __builtin_prefetch(pf[g] + c);
    V s = V::load(ab + c);
    for (int g = 0; g < G; ++g) s = V::fma(xv[g], V::load(r[g] + c), s);
    s.store(ab + c);
  }
  for (; c < wdt; ++c) {
    float s = ab[c];
    for (int g = 0; g < G; ++g) s += xg[g] * tof(r[g][c]);
    ab[c] = s;
  }
}

// Dense weights stored (K, N). Units are output segments [u0, u1); four kept inputs at a time, so each
// accumulator is loaded and stored once per four weight vectors.
template <class T>
void in_dense(const Args& a, int64_t u0, int64_t u1) {
  const T* w = static_cast<const T*>(a.values);
  const int64_t N = a.N, B = a.B, nact = a.nact;
  const int64_t c0 = u0 * kInSeg, c1 = u1 * kInSeg < N ? u1 * kInSeg : N, tile = in_tile(B);
  constexpr int G = 4;
  float* const acc = t_acc;  // the thread's buffer, its address looked up once
  for (int64_t t0 = c0; t0 < c1; t0 += tile) {
    const int64_t wdt = c1 - t0 < tile ? c1 - t0 : tile;
    in_zero(acc, B * wdt);
    int64_t j = 0;
    for (; j + G <= nact; j += G) {
      const T* r[G];
      const T* pf[G];
      float xg[G];
      for (int g = 0; g < G; ++g) {
        r[g] = w + static_cast<int64_t>(a.act[j + g]) * N + t0;
        const int64_t nx = j + G + g < nact ? j + G + g : nact - 1;
        pf[g] = w + static_cast<int64_t>(a.act[nx]) * N + t0;
      }
      for (int64_t b = 0; b < B; ++b) {
        for (int g = 0; g < G; ++g) xg[g] = a.xa[(j + g) * B + b];
        in_axpy<T, G>(acc + b * wdt, r, xg, b == 0 ? pf : nullptr, wdt);
      }
    }
    for (; j < nact; ++j) {
      const T* r[1] = {w + static_cast<int64_t>(a.act[j]) * N + t0};
      for (int64_t b = 0; b < B; ++b) in_axpy<T, 1>(acc + b * wdt, r, a.xa + j * B + b, nullptr, wdt);
    }
    in_store(a, acc, wdt, t0, wdt);
  }
}

// Bitmask by input: for each kept input, its segment's mask words over the outputs and packed values;
// the values are expanded to their columns (as the row-major bitmask kernel does) and added into the
// accumulators of every batch row. G inputs at a time: their expansions are independent (more work in
// flight) and each accumulator is loaded and stored once for all G.
template <class T, int G>
inline void in_bitmask_group(const Args& a, const int64_t* kg, const float* const* xg, float* acc, int64_t stride,
                             int64_t s0, int64_t s1, int64_t w0, int64_t w1) {
  const T* vals = static_cast<const T*>(a.values);
  const uint64_t* mask = reinterpret_cast<const uint64_t*>(a.mask);
  const int64_t B = a.B, kw = a.kwords, ns = a.ntiles;
  constexpr int64_t kSegWords = kInSeg / 64;
  for (int64_t s = s0; s < s1; ++s) {
    const T* v[G];
    for (int g = 0; g < G; ++g) v[g] = vals + a.ptr[kg[g] * ns + s];
    const int64_t we = (s + 1) * kSegWords < w1 ? (s + 1) * kSegWords : w1;
    for (int64_t wi = s * kSegWords; wi < we; ++wi) {
      uint64_t m[G], any = 0;
      for (int g = 0; g < G; ++g) any |= m[g] = mask[kg[g] * kw + wi];
      if (!any) continue;
      const int64_t at = (wi - w0) * 64;
      int off[G];
      for (int g = 0; g < G; ++g) off[g] = 0;
#pragma GCC unroll 8
      for (int q = 0; q < 64 / W; ++q) {
        V e[G];
        for (int g = 0; g < G; ++g) {
          const unsigned bits = static_cast<unsigned>(m[g] >> (q * W)) & kLaneMask;
          e[g] = V::expand(v[g] + off[g], bits);
          off[g] += popc(bits);
        }
        for (int64_t b = 0; b < B; ++b) {
          float* ab = acc + b * stride + at + q * W;
          V t = V::load(ab);
          for (int g = 0; g < G; ++g) t = V::fma(V::set1(xg[g][b]), e[g], t);
          t.store(ab);
        }
      }
      for (int g = 0; g < G; ++g) v[g] += popc(m[g]);
    }
  }
}

template <class T>
void in_bitmask(const Args& a, int64_t u0, int64_t u1) {
  const int64_t N = a.N, B = a.B, nact = a.nact;
  const int64_t c0 = u0 * kInSeg, c1 = u1 * kInSeg < N ? u1 * kInSeg : N, tile = in_tile(B);
  constexpr int G = 4;
  float* const acc = t_acc;  // the thread's buffer, its address looked up once
  for (int64_t t0 = c0; t0 < c1; t0 += tile) {
    const int64_t wdt = c1 - t0 < tile ? c1 - t0 : tile;
    const int64_t stride = (wdt + 63) / 64 * 64;  // whole mask words: the ragged last one writes padding
    in_zero(acc, B * stride);
    const int64_t s0 = t0 / kInSeg, s1 = (t0 + wdt + kInSeg - 1) / kInSeg;
    const int64_t w0 = t0 / 64, w1 = (t0 + wdt + 63) / 64;
    int64_t j = 0;
    for (; j + G <= nact; j += G) {
      int64_t kg[G];
      const float* xg[G];
      for (int g = 0; g < G; ++g) {
        kg[g] = a.act[j + g];
        xg[g] = a.xa + (j + g) * B;
      }
      in_bitmask_group<T, G>(a, kg, xg, acc, stride, s0, s1, w0, w1);
    }
    for (; j < nact; ++j) {
      const int64_t kg[1] = {a.act[j]};
      const float* xg[1] = {a.xa + j * B};
      in_bitmask_group<T, 1>(a, kg, xg, acc, stride, s0, s1, w0, w1);
    }
    in_store(a, acc, stride, t0, wdt);
  }
}

double read_sum(const float* p, int64_t n) {
  V s[8] = {V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero(), V::zero()};
  int64_t i = 0;
  for (; i + 8 * W <= n; i += 8 * W)
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) s[q] = V::add(s[q], V::load(p + i + q * W));
  double total = 0.0;
  for (int q = 0; q < 8; ++q) total += s[q].sum();
  for (; i < n; ++i) total += p[i];
  return total;
}

const Table kTable = {
    kName,
    W,
    {{gemv_dense<float>,
#if SB_LEVEL == 3
      gemv_dense_dpbf16},
#else
      gemv_dense<uint16_t>},
#endif
     {gemv_nm<float>, gemv_nm<uint16_t>},
     {gemv_bitmask<float>, gemv_bitmask<uint16_t>},
     {gemv_csr16<float>, gemv_csr16<uint16_t>},
     {gemv_bsr<float>, gemv_bsr<uint16_t>},
     {in_dense<float>, in_dense<uint16_t>},
     {in_bitmask<float>, in_bitmask<uint16_t>}},
    {{spmm_dense<float>, spmm_dense<uint16_t>},
     {spmm_nm<float>, spmm_nm<uint16_t>},
     {spmm_bitmask<float>, spmm_bitmask<uint16_t>},
     {spmm_csr16<float>, spmm_csr16<uint16_t>},
     {spmm_bsr<float>, spmm_bsr<uint16_t>},
     {in_dense<float>, in_dense<uint16_t>},
     {in_bitmask<float>, in_bitmask<uint16_t>}},
    read_sum,
    SB_LEVEL == 3,
};

}  // namespace

const Table* SB_TABLE_FN() { return &kTable; }

}  // namespace sb
