// Ring-buffer scatter and position increment for the TensorRT backend's `ring` state layout.
#include "trt_kernels.hpp"

namespace wn {
namespace {

__global__ void ring_scatter_kernel(unsigned char* __restrict__ state, const unsigned char* __restrict__ update,
                                    const int64_t* __restrict__ rings, const int64_t* __restrict__ position,
                                    int64_t layers, int64_t rows, int64_t row_bytes, int64_t total) {
  const int64_t pos = *position;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t byte = i % row_bytes;
    const int64_t bl = i / row_bytes;
    const int64_t l = bl % layers;
    const int64_t b = bl / layers;
    const int64_t row = rings[2 * l] + pos % rings[2 * l + 1];
    state[(b * rows + row) * row_bytes + byte] = update[i];
  }
}

struct Positions {
  int64_t* p[8];
};

__global__ void increment_kernel(Positions positions, int count) {
  if (threadIdx.x < count) *positions.p[threadIdx.x] += 1;
}

}  // namespace

cudaError_t launch_ring_scatter(unsigned char* state, const unsigned char* update, const int64_t* rings,
                                const int64_t* position, int64_t batch, int64_t layers, int64_t rows,
                                int64_t row_bytes, cudaStream_t stream) {
  const int64_t total = batch * layers * row_bytes;
  const int threads = 256;
  const int blocks = static_cast<int>((total + threads - 1) / threads < 1024 ? (total + threads - 1) / threads : 1024);
  ring_scatter_kernel<<<blocks, threads, 0, stream>>>(state, update, rings, position, layers, rows, row_bytes, total);
  return cudaGetLastError();
}

cudaError_t launch_increment(int64_t* const* positions, int count, cudaStream_t stream) {
  Positions p{};
  if (count < 0 || count > 8) return cudaErrorInvalidValue;
  for (int i = 0; i < count; ++i) p.p[i] = positions[i];
  increment_kernel<<<1, 32, 0, stream>>>(p, count);
  return cudaGetLastError();
}

}  // namespace wn
