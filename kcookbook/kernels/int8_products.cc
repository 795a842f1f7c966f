// int8 weights times a few float32 rows: decoding's products on a CPU, for jax (an XLA FFI custom
// call) and for torch (a plain C function on tensors' memory).
//
// Decoding one token multiplies one activation row (or a few: the batch) by every weight matrix,
// so its speed is how fast the weights are read. XLA's CPU int8 products convert the weights to
// another type in memory before multiplying; these loops widen each int8 weight to float32 in a
// register, multiply-add it into float32 sums, and read every weight once. The compiler vectorises
// the inner loops (-O3 -march=native). Sums are float32: exact for the products of int8 rows
// (Keras' W8A8) while a sum stays below 2^24.
//
//   columns: y (rows, n) = x (rows, k) @ w (k, n)      (Keras' int8 Dense kernel)
//   rows:    y (rows, n) = x (rows, k) @ t (n, k)^T    (a tied int8 embedding table)
//
// XLA FFI targets (built with -DKCOOKBOOK_XLA_FFI and jaxlib's headers): kcookbook_int8_columns and
// kcookbook_int8_rows. Always: kcookbook_int8_product(x, w, y, rows, k, n, layout, threads) and
// kcookbook_int8_dense (the product with Keras' scales, and W8A8's row quantisation, for torch).
// Both split the outputs into parts. XLA's: the calling thread and one task on XLA's thread pool
// take them in turn (the caller takes every part the task has not started, so a busy pool only
// costs time). torch's: an OpenMP loop (built with -fopenmp; the process's one libgomp, torch's,
// so its threads are torch's own, with no second pool competing for the cores), else the caller.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#ifdef KCOOKBOOK_XLA_FFI
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
#endif

namespace {

constexpr int64_t kColumnsTile = 64;         // output columns summed at once for several rows
constexpr int64_t kColumnsTileOneRow = 256;  // and for one row (longer runs of each weight row)
constexpr int64_t kRowsTile = 4;             // rows sharing one pass over a tile of weights

// y[:, n0:n1] for w (k, n): for each tile of columns, each weight row is widened once and
// multiply-added into the sums of one row, or of up to kRowsTile rows at a time.
void columns_part(const float* x, const int8_t* w, float* y, int64_t rows, int64_t k, int64_t n,
                  int64_t n0, int64_t n1) {
  if (rows == 1) {
    for (int64_t c0 = n0; c0 < n1; c0 += kColumnsTileOneRow) {
      const int64_t width = std::min(kColumnsTileOneRow, n1 - c0);
      float sums[kColumnsTileOneRow] = {};
      if (width == kColumnsTileOneRow) {
        for (int64_t i = 0; i < k; ++i) {
          const int8_t* weights = w + i * n + c0;
          const float xi = x[i];
#pragma omp simd
          for (int64_t j = 0; j < kColumnsTileOneRow; ++j) sums[j] += xi * static_cast<float>(weights[j]);
        }
      } else {
        for (int64_t i = 0; i < k; ++i) {
          const int8_t* weights = w + i * n + c0;
          for (int64_t j = 0; j < width; ++j) sums[j] += x[i] * static_cast<float>(weights[j]);
        }
      }
      std::memcpy(y + c0, sums, width * sizeof(float));
    }
    return;
  }
  for (int64_t c0 = n0; c0 < n1; c0 += kColumnsTile) {
    const int64_t width = std::min(kColumnsTile, n1 - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsTile) {
      const int64_t height = std::min(kRowsTile, rows - r0);
      float sums[kRowsTile][kColumnsTile] = {};
      const float* xr = x + r0 * k;
      if (width == kColumnsTile && height == kRowsTile) {
        for (int64_t i = 0; i < k; ++i) {
          const int8_t* weights = w + i * n + c0;
          const float x0 = xr[i], x1 = xr[k + i], x2 = xr[2 * k + i], x3 = xr[3 * k + i];
#pragma omp simd
          for (int64_t j = 0; j < kColumnsTile; ++j) {
            const float v = weights[j];
            sums[0][j] += x0 * v;
            sums[1][j] += x1 * v;
            sums[2][j] += x2 * v;
            sums[3][j] += x3 * v;
          }
        }
      } else {
        for (int64_t i = 0; i < k; ++i) {
          const int8_t* weights = w + i * n + c0;
          for (int64_t r = 0; r < height; ++r) {
            const float xv = xr[r * k + i];
            for (int64_t j = 0; j < width; ++j) sums[r][j] += xv * static_cast<float>(weights[j]);
          }
        }
      }
      for (int64_t r = 0; r < height; ++r) std::memcpy(y + (r0 + r) * n + c0, sums[r], width * sizeof(float));
    }
  }
}

// y[:, n0:n1] for t (n, k): each table row is widened once into `widened`, then dotted with every row.
void rows_part(const float* x, const int8_t* t, float* y, int64_t rows, int64_t k, int64_t n,
               int64_t n0, int64_t n1) {
  std::unique_ptr<float[]> widened(new float[k]);
  float* v = widened.get();
  for (int64_t j = n0; j < n1; ++j) {
    const int8_t* entry = t + j * k;
    if (rows == 1) {
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < k; ++i) sum += x[i] * static_cast<float>(entry[i]);
      y[j] = sum;
      continue;
    }
#pragma omp simd
    for (int64_t i = 0; i < k; ++i) v[i] = entry[i];
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * k;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < k; ++i) sum += xr[i] * v[i];
      y[r * n + j] = sum;
    }
  }
}

// Runs part(n0, n1) over [0, n) in parts of `grain` outputs, on the caller and one task on `pool`.
template <typename Pool, typename Part>
void in_parts(Pool& pool, int64_t n, int64_t grain, Part part) {
  const int64_t parts = (n + grain - 1) / grain;
  if (parts < 2 || pool.num_threads() < 2) {
    part(0, n);
    return;
  }
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto take_parts = [progress, parts, grain, n, part]() {
    for (int64_t p; (p = progress->next.fetch_add(1)) < parts;) {
      part(p * grain, std::min(n, (p + 1) * grain));
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  pool.Schedule(std::function<void()>(take_parts));
  take_parts();
  while (progress->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

constexpr int64_t kColumnsGrain = 256, kRowsGrain = 2048;  // outputs per part

#ifdef KCOOKBOOK_XLA_FFI
ffi::Error Int8Columns(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                       ffi::ResultBuffer<ffi::F32> y) {
  if (w.dimensions().size() != 2 || x.dimensions().size() == 0 || x.dimensions().back() != w.dimensions()[0])
    return ffi::Error::InvalidArgument("kcookbook_int8_columns: x (..., k) and w (k, n) do not match");
  const int64_t k = w.dimensions()[0], n = w.dimensions()[1], rows = x.element_count() / std::max<int64_t>(k, 1);
  const float* xp = x.typed_data();
  const int8_t* wp = w.typed_data();
  float* yp = y->typed_data();
  in_parts(pool, n, kColumnsGrain, [=](int64_t n0, int64_t n1) { columns_part(xp, wp, yp, rows, k, n, n0, n1); });
  return ffi::Error::Success();
}

ffi::Error Int8Rows(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> t,
                    ffi::ResultBuffer<ffi::F32> y) {
  if (t.dimensions().size() != 2 || x.dimensions().size() == 0 || x.dimensions().back() != t.dimensions()[1])
    return ffi::Error::InvalidArgument("kcookbook_int8_rows: x (..., k) and t (n, k) do not match");
  const int64_t n = t.dimensions()[0], k = t.dimensions()[1], rows = x.element_count() / std::max<int64_t>(k, 1);
  const float* xp = x.typed_data();
  const int8_t* tp = t.typed_data();
  float* yp = y->typed_data();
  in_parts(pool, n, kRowsGrain, [=](int64_t n0, int64_t n1) { rows_part(xp, tp, yp, rows, k, n, n0, n1); });
  return ffi::Error::Success();
}

#endif  // KCOOKBOOK_XLA_FFI

}  // namespace

#ifdef KCOOKBOOK_XLA_FFI
XLA_FFI_DEFINE_HANDLER_SYMBOL(kcookbook_int8_columns, Int8Columns,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(kcookbook_int8_rows, Int8Rows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
#endif  // KCOOKBOOK_XLA_FFI

// Runs part(n0, n1) over [0, n) in parts of `grain` outputs on `threads` OpenMP threads (torch's:
// the process's one libgomp); serially when built without OpenMP, or for one thread or one part.
template <typename Part>
void in_openmp_parts(int32_t threads, int64_t n, int64_t grain, Part part) {
  const int64_t parts = (n + grain - 1) / grain;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && parts > 1)
  for (int64_t p = 0; p < parts; ++p) part(p * grain, std::min(n, (p + 1) * grain));
}

// The same products on raw memory (torch's tensors): layout 0 multiplies by w (k, n), layout 1 by
// t (n, k)^T, on `threads` OpenMP threads (torch.get_num_threads()).
extern "C" void kcookbook_int8_product(const float* x, const int8_t* w, float* y, int64_t rows,
                                       int64_t k, int64_t n, int32_t layout, int32_t threads) {
  if (layout == 0)
    in_openmp_parts(threads, n, kColumnsGrain, [=](int64_t n0, int64_t n1) { columns_part(x, w, y, rows, k, n, n0, n1); });
  else
    in_openmp_parts(threads, n, kRowsGrain, [=](int64_t n0, int64_t n1) { rows_part(x, w, y, rows, k, n, n0, n1); });
}

// An int8 Dense layer's output before its bias, with Keras' numerics, in one call (torch: one op
// instead of the ~10 small ones around the product): y (rows, n) = (x' @ w) / (scale * row_scale),
// w (k, n) int8, scale (n,). Weight-only (quantize == 0): x' = x, row_scale = 1. W8A8
// (quantize != 0, Keras' AbsMaxQuantizer): each row's row_scale = high / (max |x| + epsilon) and
// x' = clamp(round-half-even(x * row_scale), low, high), in float32 as torch computes them.
extern "C" void kcookbook_int8_dense(const float* x, const int8_t* w, const float* scale, float* y,
                                     int64_t rows, int64_t k, int64_t n, int32_t threads, int32_t quantize,
                                     float low, float high, float epsilon) {
  std::unique_ptr<float[]> quantized, row_scales(new float[rows]);
  for (int64_t r = 0; r < rows; ++r) row_scales[r] = 1.f;
  if (quantize) {
    quantized.reset(new float[rows * k]);
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * k;
      float largest = 0.f;
      for (int64_t i = 0; i < k; ++i) largest = std::max(largest, std::fabs(xr[i]));
      const float row_scale = high / (largest + epsilon);
      for (int64_t i = 0; i < k; ++i)
        quantized[r * k + i] = std::min(std::max(std::nearbyint(xr[i] * row_scale), low), high);
      row_scales[r] = row_scale;
    }
    x = quantized.get();
  }
  const float* row_scale = row_scales.get();
  in_openmp_parts(threads, n, kColumnsGrain, [=](int64_t n0, int64_t n1) {
    columns_part(x, w, y, rows, k, n, n0, n1);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = n0; j < n1; ++j) y[r * n + j] /= scale[j] * row_scale[r];
  });
}
