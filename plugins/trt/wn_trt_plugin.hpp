// wn_export::WaveNetStep, the fused WaveNet step as a TensorRT IPluginV3 (see wn_step_plugin.cpp).
#pragma once

#include <NvInferRuntime.h>

#define WN_TRT_PLUGIN_API __attribute__((visibility("default")))

namespace wn {

// The plugin's creator, for programs that link the library instead of loading it: register it with
// getPluginRegistry()->registerCreator(*wn::wn_trt_plugin_creator(), "wn_export") before parsing a
// fused step graph or deserializing an engine built from one.
WN_TRT_PLUGIN_API nvinfer1::IPluginCreatorV3One* wn_trt_plugin_creator();

}  // namespace wn

// What IPluginRegistry::loadLibrary (and trtexec --dynamicPlugins) look up in the shared library.
extern "C" {
WN_TRT_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
WN_TRT_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
}
