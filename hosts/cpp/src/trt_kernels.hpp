// Device-side state update for the TensorRT backend (trt_kernels.cu, compiled by nvcc).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace wn {

// state (batch, rows, row_bytes) ← update (batch, layers, row_bytes): row l of stream b goes to
// state row rings[2l] + *position mod rings[2l+1]. `position` and `rings` are device pointers, so a
// captured CUDA graph replays the right rows every step.
cudaError_t launch_ring_scatter(unsigned char* state, const unsigned char* update, const int64_t* rings,
                                const int64_t* position, int64_t batch, int64_t layers, int64_t rows,
                                int64_t row_bytes, cudaStream_t stream);

// *position += 1 for each of `count` device int64 counters.
cudaError_t launch_increment(int64_t* const* positions, int count, cudaStream_t stream);

}  // namespace wn
