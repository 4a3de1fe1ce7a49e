// Linked instead of trt_backend.cpp when this build has no TensorRT library to link against.
#include "wn/backend.hpp"

namespace wn {

bool have_tensorrt() { return false; }

std::unique_ptr<Backend> make_trt_backend(const TrtOptions&) {
  throw Error("this build has no TensorRT backend: reconfigure hosts/cpp with -DWN_WITH_TENSORRT=ON "
              "-DTensorRT_ROOT=<TensorRT install> (and a CUDA toolkit), then rebuild");
}

}  // namespace wn
